"""DP-FedAvg: clipped norms <= C (property), noise std = σ·C/m as configured, ε per round."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.algorithms.privacy import clip_delta, dp_mean, epsilon
from fedfm.config import build_config
from fedfm.sim.attacks import run_attacked
from tests.conftest import tiny_raw


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=6),
       st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=4), st.floats(1e-4, 1e3))
def test_clipped_norm_is_at_most_c(xs, ys, clip):
    delta = {"a": torch.tensor(xs), "b": torch.tensor(ys)}
    out, before = clip_delta(delta, clip)
    after = math.sqrt(sum(float((v ** 2).sum()) for v in out.values()))
    assert after <= clip * (1 + 1e-9)
    if before <= clip:  # small updates are untouched
        assert all(torch.allclose(out[k], delta[k].double()) for k in delta)
    else:  # large ones keep their direction and land exactly on the sphere
        assert after == pytest.approx(clip, rel=1e-6)


def cfg_with(**dp):
    over = {f"dp.{k}": v for k, v in {"enabled": True, **dp}.items()}
    return build_config(tiny_raw(**over, **{"data.num_clients": 10, "sampling.fraction": 0.4}))


def test_noise_std_is_sigma_c_over_m():
    cfg = cfg_with(clip=0.5, noise_multiplier=1.5)
    ref = {"w": torch.zeros(200, 100)}
    sets = [{"w": torch.zeros(200, 100)} for _ in range(4)]  # zero updates: only noise remains
    out, metrics = dp_mean(cfg, 0, sets, ref, m=4)
    expected = 1.5 * 0.5 / 4
    assert float(out["w"].std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(out["w"].mean())) < 4 * expected / math.sqrt(out["w"].numel())
    assert metrics["dp_noise_std"] == pytest.approx(expected)
    again, _ = dp_mean(cfg, 0, sets, ref, m=4)  # seeded by (seed, round): reproducible
    other, _ = dp_mean(cfg, 1, sets, ref, m=4)
    assert torch.equal(out["w"], again["w"]) and not torch.equal(out["w"], other["w"])


def test_one_client_moves_the_mean_by_at_most_c_over_m():
    cfg = cfg_with(clip=0.1, noise_multiplier=0.0)
    ref = {"w": torch.ones(5)}
    sets = [{"w": torch.ones(5) * 1000}] + [{"w": torch.ones(5)} for _ in range(3)]
    out, metrics = dp_mean(cfg, 0, sets, ref, m=4)
    assert float((out["w"] - ref["w"]).norm()) == pytest.approx(0.1 / 4, rel=1e-5)
    assert metrics["dp_clipped"] == 1 and metrics["dp_epsilon"] is None  # σ = 0: no guarantee


def test_epsilon_from_the_accountant():
    e1, e5 = epsilon(0.4, 1.0, 1, 1e-5), epsilon(0.4, 1.0, 5, 1e-5)
    assert 0 < e1 < e5  # composition over rounds
    assert epsilon(0.4, 4.0, 5, 1e-5) < e5  # more noise, less ε
    assert epsilon(0.1, 1.0, 5, 1e-5) < e5  # subsampling amplifies privacy
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    acc = rdp.RdpAccountant([2, 4, 8, 16, 32])
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.4, dp_accounting.GaussianDpEvent(1.0)), 5))
    assert e5 <= acc.get_epsilon(1e-5) + 1e-9  # our finer orders give a bound at least as tight


def test_epsilon_is_reported_every_round():
    cfg = build_config(tiny_raw(rounds=2, **{"eval.every": 2, "dp.enabled": True,
                                             "dp.noise_multiplier": 1.0, "dp.clip": 1.0}))
    rows, _ = run_attacked(cfg)
    eps = [r["dp_epsilon"] for r in rows]
    assert all(e is not None and e > 0 for e in eps) and eps == sorted(eps) and eps[0] < eps[-1]
    assert all(r["dp_noise_std"] == pytest.approx(1.0 / 4) for r in rows)  # 4 clients, σC/m
