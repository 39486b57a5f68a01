"""Heterogeneous-rank LoRA: hetlora, flexlora, flora (mechanisms + tiny end-to-end runs)."""

from __future__ import annotations

import json

import pytest
import torch

from fedfm.algorithms import registry
from fedfm.algorithms.flexlora import svd_factors, weighted_product_mean
from fedfm.algorithms.flora import stack
from fedfm.algorithms.hetlora import norm_weights, tail_norm, zero_padded_mean
from fedfm.algorithms.lowrank import rank_for
from fedfm.cli import main
from fedfm.config import build_config
from fedfm.core.errors import ConfigError
from fedfm.run import run
from tests.conftest import tiny_raw

METHODS = ["hetlora", "flexlora", "flora"]
TIERS = {"resources.tiers": {"small": 0.25, "large": 1.0}}


def _pairs(ranks, out=12, inp=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g)) for r in ranks]


def test_rank_rule():
    assert [rank_for(b, 8) for b in (0.01, 0.25, 0.5, 1.0)] == [1, 2, 4, 8]


def test_flora_stacking_is_exact():
    pairs, w = _pairs([1, 3, 4]), [5.0, 2.0, 3.0]
    a, b = stack(pairs, w)
    assert a.shape == (8, 10) and b.shape == (12, 8)
    want = sum(wk / 10.0 * (bk @ ak) for (ak, bk), wk in zip(pairs, w))
    assert torch.allclose(b @ a, want, atol=1e-5)
    # averaging A and B separately (FedAvg on factors) is NOT exact: the cross terms B_j A_k
    a_avg = sum(wk / 10.0 * torch.cat([ak, torch.zeros(4 - ak.shape[0], 10)])
                for (ak, _), wk in zip(pairs, w))
    b_avg = sum(wk / 10.0 * torch.cat([bk, torch.zeros(12, 4 - bk.shape[1])], 1)
                for (_, bk), wk in zip(pairs, w))
    assert (b_avg @ a_avg - want).norm() > 0.1 * want.norm()


def test_flexlora_svd_redistribution_is_the_best_rank_r():
    pairs = _pairs([2, 4, 8], out=16, inp=12)
    delta = weighted_product_mean(pairs, [1, 1, 2], scale=0.5)
    sigma = torch.linalg.svdvals(delta.double())
    for r in (1, 3, 6):
        a, b = svd_factors(delta, r, scale=0.5, c=0.7)
        assert a.shape == (r, 12) and b.shape == (16, r)
        err = (delta.double() - 0.5 * b.double() @ a.double()).norm()
        assert err == pytest.approx(float(sigma[r:].pow(2).sum().sqrt()), rel=1e-4)
        assert torch.allclose(a.norm(dim=1), torch.full((r,), 0.7), atol=1e-5)  # A's scale
    # the truncation of the largest-rank factors is the best rank-r as well
    a8, b8 = svd_factors(delta, 8, 0.5, 0.7)
    a3, b3 = svd_factors(delta, 3, 0.5, 0.7)
    assert torch.allclose(b8[:, :3] @ a8[:3], b3 @ a3, atol=1e-4)


def test_hetlora_zero_padding_and_truncation_shapes():
    prev_a, prev_b = torch.full((8, 10), 7.0), torch.full((12, 8), 7.0)
    pairs = _pairs([2, 4])
    w = norm_weights(pairs, [1, 1])
    n = [float((b @ a).norm()) for a, b in pairs]
    assert w == pytest.approx([n[0] / sum(n), n[1] / sum(n)])
    a = zero_padded_mean([p[0] for p in pairs], w, prev_a, 0)
    b = zero_padded_mean([p[1] for p in pairs], w, prev_b, 1)
    assert a.shape == (8, 10) and b.shape == (12, 8)
    assert torch.allclose(a[:2], w[0] * pairs[0][0][:2] + w[1] * pairs[1][0][:2], atol=1e-6)
    assert torch.allclose(a[2:4], w[1] * pairs[1][0][2:4], atol=1e-6)  # zero-padded client 0
    assert torch.equal(a[4:], prev_a[4:]) and torch.equal(b[:, 4:], prev_b[:, 4:])  # unheld
    assert float(tail_norm(pairs[1][0], pairs[1][1], 0.5)) == pytest.approx(
        float(pairs[1][0][2:].norm() * pairs[1][1][:, 2:].norm()), rel=1e-6)


@pytest.mark.parametrize("algorithm", METHODS)
def test_runs_with_per_client_ranks(algorithm, tmp_path):
    no_pruning = {"hetlora.prune_gamma": 1.0} if algorithm == "hetlora" else {}
    raw = tiny_raw(algorithm=algorithm, out=str(tmp_path / algorithm), rounds=3, **TIERS,
                   **no_pruning)
    s = run(build_config(raw), quiet=True)
    rows = [json.loads(x) for x in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns
    ranks = {c["tier"]: c["rank"] for c in s["clients"]}
    assert ranks == {"small": 1, "large": 4}  # lora_rank 4, budgets 0.25 / 1.0
    by_tier = {c["tier"]: c for c in s["clients"]}
    assert by_tier["small"]["lora_params"] * 4 == by_tier["large"]["lora_params"]
    assert s["acc_global"] is not None and s["bytes_up"] > 0


def test_hetlora_self_pruning_lowers_the_rank_it_is_sent(tmp_path):
    raw = tiny_raw(algorithm="hetlora", out=str(tmp_path / "h"), rounds=3, **TIERS,
                   **{"hetlora.prune_gamma": 0.5, "hetlora.prune_lambda": 0.1})
    s = run(build_config(raw), quiet=True)
    rows = [json.loads(x) for x in (tmp_path / "h/metrics.jsonl").read_text().splitlines()]
    assert sum(r["pruned_clients"] for r in rows) > 0
    assert {c["tier"]: c["rank"] for c in s["clients"]}["large"] < 4


def test_flora_global_model_is_base_plus_the_fold(tmp_path):
    from fedfm.sim.world import build_world

    raw = tiny_raw(algorithm="flora", out=str(tmp_path / "f"), rounds=1, **TIERS)
    world = build_world(build_config(raw))
    alg = world.algorithm
    alg.init_server(world.model)
    pairs = {n: _pairs([1, 4], *alg.shape[n]) for n in alg.layers()}
    from fedfm.transport.messages import ClientUpdate
    ups = [ClientUpdate(1, k, n_k, {**{f"{n}.lora_{x}": pairs[n][k][0 if x == "A" else 1]
                                       for n in alg.layers() for x in "AB"},
                                    "head.weight": alg.global_["head.weight"],
                                    "head.bias": alg.global_["head.bias"]})
           for k, n_k in enumerate([3, 1])]
    alg.aggregate_train(1, ups)
    for n in alg.layers():
        want = alg.scale * (0.75 * pairs[n][0][1] @ pairs[n][0][0] + 0.25 * pairs[n][1][1] @ pairs[n][1][0])
        assert torch.allclose(alg.global_delta(n), want, atol=1e-5)


@pytest.mark.parametrize("key, value, needle", [
    ("aggregation.method", "median", "aggregation.method = 'median' is not supported"),
    ("dp.enabled", True, "dp.enabled = true is not supported"),
    ("model.finetune", "full", "model.finetune = 'full' is not supported"),
])
def test_unsupported_options_exit_2(key, value, needle, capsys, tmp_path):
    for algorithm in METHODS:
        with pytest.raises(ConfigError, match=needle):
            build_config(tiny_raw(algorithm=algorithm, **{key: value}))
    text = str(value).lower()
    code = main(["run", "configs/fedavg.toml", "algorithm=flora", f"{key}={text}",
                 f"out={tmp_path / 'x'}"])
    assert code == 2 and "Traceback" not in capsys.readouterr().err


def test_listed():
    assert set(METHODS) <= set(registry.names())


FAMILY_RUNS = [("hetlora", "llama"), ("flexlora", "qwen3"), ("flora", "gpt2")]
SLOW_RUNS = [(m, f) for m in METHODS for f in ("llama", "qwen3", "gpt2", "bert")
             if (m, f) not in FAMILY_RUNS]


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    from tests.hf_tiny import tiny_folder

    root = tmp_path_factory.mktemp("hf")
    return lambda fam: tiny_folder(root, fam)


def _family_run(method, family, hf_folders, tmp_path):
    raw = tiny_raw(algorithm=method, out=str(tmp_path / "r"), rounds=2, **TIERS, **{
        "model.name": "hf", "model.path": str(hf_folders(family))})
    s = run(build_config(raw), quiet=True)
    assert {c["tier"]: c["rank"] for c in s["clients"]}["small"] == 1
    assert s["acc_global"] > 1.2 / s["num_labels"]


@pytest.mark.parametrize("method, family", FAMILY_RUNS)
def test_runs_on_hf_families(method, family, hf_folders, tmp_path):
    _family_run(method, family, hf_folders, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method, family", SLOW_RUNS)
def test_runs_on_every_family(method, family, hf_folders, tmp_path):
    _family_run(method, family, hf_folders, tmp_path)


def test_folding_matches_the_adapter_on_conv1d(hf_folders, tmp_path):
    """GPT-2's Conv1D stores W as (in, out): W0 + ΔWᵀ must equal the active LoRA's output."""
    from fedfm.models.lora import lora_modules
    from fedfm.sim.world import build_world

    raw = tiny_raw(algorithm="flora", out=str(tmp_path / "f"), **{
        "model.name": "hf", "model.path": str(hf_folders("gpt2"))})
    world = build_world(build_config(raw))
    alg, mods = world.algorithm, lora_modules(world.model)
    name = alg.layers()[0]
    m = mods[name]
    assert alg.transposed[name]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, alg.shape[name][1], generator=g), torch.randn(alg.shape[name][0], 2, generator=g)
    x = torch.randn(3, alg.shape[name][1], generator=g)
    from fedfm.algorithms.lowrank import set_lora

    set_lora(m, a, b, alg.scale)
    with torch.no_grad():
        y_adapter = m(x)
        m.weight.copy_(alg.with_delta(name, alg.scale * b @ a))
        m.set_active(False)
        y_folded = m(x)
    assert torch.allclose(y_adapter, y_folded, atol=1e-4)
