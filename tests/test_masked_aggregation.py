"""aggregation.masked_aggregate on hand-built partial and prefix-slice uploads: the one masked
mean every averaging algorithm calls, with its [aggregation] and [dp] hooks."""

from __future__ import annotations

import pytest
import torch

from fedfm.algorithms import registry
from fedfm.algorithms.aggregation import masked_aggregate, robust_aggregate
from fedfm.algorithms.capabilities import Capabilities
from fedfm.algorithms.privacy import dp_mean
from fedfm.config import build_config
from fedfm.core.errors import ConfigError
from tests.conftest import tiny_raw


def cfg(**over):
    return build_config(tiny_raw(**over))


def test_partial_uploads_are_averaged_over_their_holders_only():
    sets = [{"a": torch.tensor([1.0]), "b": torch.tensor([10.0])},
            {"a": torch.tensor([3.0])},
            {"a": torch.tensor([5.0]), "b": torch.tensor([20.0])}]
    out, _ = masked_aggregate(cfg(), 0, sets, [1, 1, 2], {"c": torch.tensor([7.0])})
    assert out["a"].item() == pytest.approx((1 + 3 + 10) / 4)
    assert out["b"].item() == pytest.approx((10 + 40) / 3)  # client 1 does not dilute b
    assert set(out) == {"a", "b"}  # keys nobody uploaded are the caller's to keep


def test_median_per_holder_set_ignores_a_poisoned_minority():
    honest = [{"e1": torch.tensor([1.0 + 0.01 * i])} for i in range(3)]
    sets = honest + [{"e1": torch.tensor([1e6])}, {"dense": torch.tensor([2.0])}]
    out, _ = masked_aggregate(cfg(**{"aggregation.method": "median"}), 0, sets, [1] * 5, {})
    assert out["e1"].item() == pytest.approx(1.015)  # median of the 4 holders of e1
    assert out["dense"].item() == 2.0
    mean, _ = masked_aggregate(cfg(), 0, sets, [1] * 5, {})
    assert mean["e1"].item() > 1e5


def test_prefix_slices_mean_hand_computed_both_denominators():
    """θ[e] = Σ_i w_i m_i x_i / Σ_i w_i m_i (coverage) or / Σ_i w_i (all_clients); entries nobody
    holds (column 4) keep the reference, -9."""
    full = {"w": torch.full((3, 5), -9.0)}
    subs = [{"w": torch.ones(3, 4)}, {"w": 2 * torch.ones(2, 2)}, {"w": 4 * torch.ones(1, 3)}]
    cov = torch.tensor([[(1 + 4 + 12) / 6, (1 + 4 + 12) / 6, (1 + 12) / 4, 1, -9],
                        [(1 + 4) / 3, (1 + 4) / 3, 1, 1, -9],
                        [1, 1, 1, 1, -9]])
    out, _ = masked_aggregate(cfg(), 0, subs, [1, 2, 3], full)
    assert torch.allclose(out["w"], cov)
    every = torch.tensor([[17 / 6, 17 / 6, 13 / 6, 1 / 6, -9], [5 / 6, 5 / 6, 1 / 6, 1 / 6, -9],
                          [1 / 6, 1 / 6, 1 / 6, 1 / 6, -9]])
    out, _ = masked_aggregate(cfg(), 0, subs, [1, 2, 3], full, denominator="all_clients")
    assert torch.allclose(out["w"], every)


def test_prefix_slices_median_per_coverage_region():
    full = {"w": torch.full((2, 3), -9.0)}
    subs = [{"w": torch.full((2, 3), 1.0)}, {"w": torch.full((2, 2), 2.0)},
            {"w": torch.full((2, 2), 100.0)}, {"w": torch.full((1, 1), 3.0)}]
    out, _ = masked_aggregate(cfg(**{"aggregation.method": "median"}), 0, subs, [1] * 4, full)
    w = out["w"]
    assert w[0, 0] == 2.5  # region held by all four: median(1, 2, 100, 3)
    assert w[1, 1] == 2.0  # held by clients 0-2: median(1, 2, 100)
    assert w[0, 2] == 1.0  # held by client 0 alone


def test_krum_per_holder_set_and_selected_ids():
    sets = [{"x": torch.tensor([1.0, 1.0]), "y": torch.tensor([0.0])},
            {"x": torch.tensor([1.1, 0.9]), "y": torch.tensor([0.1])},
            {"x": torch.tensor([0.9, 1.1])},
            {"x": torch.tensor([50.0, -50.0])}]
    c = cfg(**{"aggregation.method": "krum", "aggregation.byzantine": 1})
    out, m = masked_aggregate(c, 0, sets, [1] * 4, {}, client_ids=[10, 11, 12, 13])
    assert out["x"].abs().max() < 2 and 13 not in m["agg_selected"]
    full = {"w": torch.zeros(4)}
    subs = [{"w": torch.ones(4)}, {"w": 1.1 * torch.ones(4)}, {"w": torch.ones(3)},
            {"w": 90 * torch.ones(3)}]
    out, m = masked_aggregate(c, 0, subs, [1] * 4, full, client_ids=[0, 1, 2, 3])
    assert out["w"].abs().max() < 2 and 3 not in m["agg_selected"]


def test_full_uploads_equal_the_plain_rules_and_dp_mean():
    g = torch.Generator().manual_seed(0)
    sets = [{"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)}
            for _ in range(5)]
    ref = {"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)}
    for method in ("mean", "median", "trimmed_mean", "krum", "multi_krum"):
        c = cfg(**{"aggregation.method": method, "aggregation.byzantine": 1})
        want, _ = robust_aggregate(sets, [1, 2, 3, 4, 5], c.aggregation)
        got, _ = masked_aggregate(c, 0, sets, [1, 2, 3, 4, 5], ref)
        assert all(torch.equal(want[k], got[k]) for k in want), method
    c = cfg(**{"dp.enabled": True, "dp.clip": 0.5, "dp.noise_multiplier": 1.0})
    want, wm = dp_mean(c, 3, sets, ref, 5)
    got, gm = masked_aggregate(c, 3, sets, [1] * 5, ref)
    assert all(torch.equal(want[k], got[k]) for k in want) and wm == gm


def test_dp_on_partial_slices_clips_each_client_jointly_and_leaves_unheld_entries():
    ref = {"w": torch.zeros(2, 2), "gate": torch.zeros(3)}
    sets = [{"w": torch.full((1, 1), 100.0), "gate": torch.full((3,), 100.0)},
            {"w": torch.full((2, 2), 0.1)}]
    c = cfg(**{"dp.enabled": True, "dp.clip": 1.0, "dp.noise_multiplier": 0.0})
    out, m = masked_aggregate(c, 0, sets, [1, 1], ref)
    assert m["dp_clipped"] == 1  # client 0's whole upload (w and gate) clipped to norm 1
    # Δ_0 = (100; 100, 100, 100), ||Δ_0|| = 200 -> every entry 0.5 (joint norm 1, not 1 per key)
    assert torch.allclose(out["gate"], torch.full((3,), 0.5))  # gate: client 0 alone
    assert out["w"][0, 0].item() == pytest.approx((0.5 + 0.1) / 2)  # two holders
    assert out["w"][1, 1].item() == pytest.approx(0.1)  # held by client 1 alone (norm 0.2 < C)


def test_every_averaging_algorithm_declares_robust_rules_and_dp():
    averaging = {"fedavg", "fedprox", "fedper", "fedms", "raffm", "heterofl", "fedmoe",
                 "randommoe"}
    for name in registry.names():
        e = registry.get(name)
        caps = e.capabilities(e.options()) if callable(e.capabilities) else e.capabilities
        if name in averaging:
            assert caps.dp and "krum" in caps.aggregation, name
    assert registry.get("local").capabilities == Capabilities(why=registry.get(
        "local").capabilities.why)


@pytest.mark.parametrize("over,needle", [
    ({"algorithm": "fedms", "model.finetune": "full"}, "Algorithms that support 'full'"),
    ({"algorithm": "fedms", "model.finetune": "head"}, "not supported by algorithm 'fedms'"),
    ({"algorithm": "fedmoe", "model.finetune": "full"}, "not supported by algorithm 'fedmoe'"),
    ({"algorithm": "local", "aggregation.method": "median"}, "Algorithms that support 'median'"),
    ({"algorithm": "local", "dp.enabled": True}, "Algorithms that support DP"),
    ({"algorithm": "raffm", "raffm.aggregation": "all_clients", "aggregation.method": "krum"},
     'set raffm.aggregation = "coverage"'),
])
def test_unsupported_combinations_are_refused_at_config_time(over, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        cfg(**over)
