"""Robust aggregation on hand-built updates: known medians, trimmed means, Krum picks, and the
effective LoRA update B·A (not the factors)."""

from __future__ import annotations

import pytest
import torch

from fedfm.algorithms.aggregation import (
    coordinate_median,
    effective,
    krum_scores,
    lora_pairs,
    pairwise_sq_distances,
    refactor,
    robust_aggregate,
    trimmed_mean,
)
from fedfm.config import build_config
from fedfm.core.errors import ConfigError
from fedfm.core.reliability import AggregationConfig
from tests.conftest import tiny_raw


def sets_of(values: list[float]) -> list[dict[str, torch.Tensor]]:
    return [{"x": torch.tensor([v, 2 * v])} for v in values]


def test_median_and_trimmed_mean_known_values():
    s = torch.tensor([[1.0], [100.0], [2.0], [3.0], [-50.0]])
    assert coordinate_median(s).item() == 2.0
    assert coordinate_median(s[:4]).item() == 2.5  # even n: mean of the two middle values
    assert trimmed_mean(s, 0.2).item() == pytest.approx(2.0)  # drops -50 and 100
    assert trimmed_mean(s, 0.0).item() == pytest.approx(s.mean().item())


def test_median_ignores_a_minority_of_huge_updates():
    sets = sets_of([1.0, 1.1, 0.9, 1e6, -1e6])
    out, _ = robust_aggregate(sets, [1] * 5, AggregationConfig(method="median"))
    assert torch.allclose(out["x"], torch.tensor([1.0, 2.0]))
    mean, _ = robust_aggregate(sets[:4], [1] * 4, AggregationConfig(method="mean"))
    assert mean["x"][0] > 1e5  # plain FedAvg is dragged away by one attacker


def test_krum_selects_from_the_honest_cluster():
    sets = sets_of([1.0, 1.05, 0.95, 1.02, 50.0, -40.0])
    out, info = robust_aggregate(sets, [1] * 6, AggregationConfig(method="krum", byzantine=2))
    assert info["selected"] in ([0], [1], [2], [3])
    out, info = robust_aggregate(sets, [1, 1, 1, 1, 1, 1],
                                 AggregationConfig(method="multi_krum", byzantine=2))
    assert info["selected"] == [0, 1, 2, 3]  # m = n - f
    assert torch.allclose(out["x"], torch.tensor([1.005, 2.01]), atol=1e-6)


def test_krum_scores_by_hand():
    d = pairwise_sq_distances(sets_of([0.0, 1.0, 3.0]))  # x = (v, 2v): ||Δ||² = 5 Δv²
    assert torch.allclose(d, torch.tensor([[0, 5, 45], [5, 0, 20], [45, 20, 0]], dtype=d.dtype))
    # n - f - 2 = 1 neighbour with f = 0
    assert torch.allclose(krum_scores(d, 0), torch.tensor([5.0, 5.0, 20.0], dtype=d.dtype))


def lora(b: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"q.lora_A": a, "q.lora_B": b, "head.w": torch.ones(2)}


def test_effective_update_is_the_product_not_the_factors():
    torch.manual_seed(0)
    a, b = torch.randn(2, 4), torch.randn(3, 2)
    m = torch.tensor([[2.0, 1.0], [0.0, 0.5]])  # B·A = (B·M)(M⁻¹·A): same model, other factors
    one, two = lora(b, a), lora(b @ m, torch.linalg.inv(m) @ a)
    assert lora_pairs(one) == ["q"]
    e1, e2 = effective(one), effective(two)
    assert set(e1) == {"q", "head.w"} and torch.allclose(e1["q"], e2["q"], atol=1e-5)
    assert pairwise_sq_distances([one, two])[0, 1] < 1e-9  # Krum sees them as identical
    assert not torch.allclose(one["q.lora_A"], two["q.lora_A"])  # the factors differ


def test_median_of_lora_pairs_is_refactorised_to_rank_r():
    torch.manual_seed(1)
    sets = [lora(torch.randn(3, 2), torch.randn(2, 4)) for _ in range(5)]
    out, _ = robust_aggregate(sets, [1] * 5, AggregationConfig(method="median"))
    assert out["q.lora_A"].shape == (2, 4) and out["q.lora_B"].shape == (3, 2)
    target = coordinate_median(torch.stack([effective(s)["q"] for s in sets]))
    u, s, vh = torch.linalg.svd(target)
    best_rank2 = (u[:, :2] * s[:2]) @ vh[:2]
    got = out["q.lora_B"].double() @ out["q.lora_A"].double()
    assert torch.allclose(got, best_rank2, atol=1e-5)  # Eckart–Young: best rank-2 approx.
    # A keeps the clients' scale (training can continue), B·A is unchanged by that choice
    mean_norm = sum(float(x["q.lora_A"].norm()) for x in sets) / 5
    assert float(out["q.lora_A"].norm()) == pytest.approx(mean_norm, rel=1e-5)


def test_refactor_is_exact_for_a_rank_r_product():
    torch.manual_seed(2)
    b, a = torch.randn(5, 2, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    a2, b2 = refactor(b @ a, [a], torch.float64)
    assert torch.allclose(b2 @ a2, b @ a, atol=1e-10)


def test_config_choices_and_dp_exclusion():
    with pytest.raises(ConfigError, match="aggregation.method must be one of"):
        build_config(tiny_raw(**{"aggregation.method": "average"}))
    with pytest.raises(ConfigError, match="dp.enabled needs aggregation.method = mean"):
        build_config(tiny_raw(**{"aggregation.method": "median", "dp.enabled": True}))
    with pytest.raises(ConfigError, match="trim_fraction"):
        build_config(tiny_raw(**{"aggregation.trim_fraction": 0.5}))
