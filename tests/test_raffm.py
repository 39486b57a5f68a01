"""RaFFM: SPP is function-preserving, extract/scatter is exact, budgets hold, the
coverage-normalised mean matches a hand computation, runs and exports work end to end."""

from __future__ import annotations

import json

import pytest
import torch

from fedfm.core.errors import ConfigError, PayloadError
from fedfm.models.bert import Bert, EncoderSpec
from fedfm.models.elastic import (
    Widths,
    build_subnetwork,
    coverage_mean,
    extract,
    scatter,
    spp,
)
from fedfm.models.sizing import CostModel, choose_widths, largest_uniform

SPEC = EncoderSpec.uniform(50, hidden=24, layers=2, heads=4, ffn=40, max_position=32)
MINILM = EncoderSpec.uniform(30522, hidden=384, layers=6, heads=12, ffn=1536)


def random_bert(spec: EncoderSpec = SPEC, seed: int = 0) -> Bert:
    model = Bert(spec).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def with_state(spec: EncoderSpec, state: dict) -> Bert:
    model = Bert(spec).eval()
    model.load_state_dict(state)
    return model


def test_spp_preserves_outputs_and_sorts_saliency():
    model = random_bert()
    state = model.state_dict()
    ordered = spp(state, SPEC.head_dim)
    ids, mask = inputs()
    with torch.no_grad():
        before, after = model(ids, mask), with_state(SPEC, ordered)(ids, mask)
    assert torch.allclose(before, after, atol=1e-5)
    key = "encoder.layer.0.intermediate.dense.weight"
    assert not torch.equal(state[key], ordered[key])  # it really reordered
    w1, w2 = ordered[key], ordered["encoder.layer.0.output.dense.weight"]
    score = w1.abs().sum(1) + w2.abs().sum(0)
    assert torch.all(score[:-1] >= score[1:])  # most salient neuron first
    q = ordered["encoder.layer.1.attention.self.query.weight"].view(4, 6, -1)
    k = ordered["encoder.layer.1.attention.self.key.weight"].view(4, 6, -1)
    s = q.abs().sum(-1) + k.abs().sum(-1)  # (heads, head_dim): sorted within each head
    assert torch.all(s[:, :-1] >= s[:, 1:])


def test_permuting_q_without_k_breaks_the_function():
    """The negative control: SPP must move q and k rows jointly (the test above can fail)."""
    model = random_bert()
    state = dict(model.state_dict())
    name = "encoder.layer.0.attention.self.query.weight"
    perm = torch.arange(SPEC.head_dim).flip(0)
    rows = torch.cat([h * SPEC.head_dim + perm for h in range(4)])
    state[name] = state[name][rows]
    state[name.replace("weight", "bias")] = state[name.replace("weight", "bias")][rows]
    ids, mask = inputs()
    with torch.no_grad():
        gap = (model(ids, mask) - with_state(SPEC, state)(ids, mask)).abs().max()
    assert gap > 1e-3


def test_extract_then_scatter_is_identity_and_touches_only_the_prefix():
    full = spp(random_bert().state_dict(), SPEC.head_dim)
    w = Widths((2, 1), (10, 25))
    sub = extract(full, w, SPEC.head_dim)
    back = scatter(full, sub)
    assert all(torch.equal(back[k], full[k]) for k in full)
    q = "encoder.layer.0.attention.self.query.weight"
    assert sub[q].shape == (2 * SPEC.head_dim, 24)
    assert sub["encoder.layer.1.output.dense.weight"].shape == (24, 25)
    changed = scatter(full, {q: sub[q] + 1})
    assert torch.equal(changed[q][:12], full[q][:12] + 1)
    assert torch.equal(changed[q][12:], full[q][12:])


def test_subnetwork_is_a_real_smaller_bert_equal_to_its_slices():
    full = random_bert()
    w = Widths((2, 3), (16, 8))
    state = extract(full.state_dict(), w, SPEC.head_dim)
    emb = {k: v for k, v in state.items() if k.startswith("embeddings.")}
    blocks = {k: v for k, v in state.items() if k.startswith("encoder.")}
    sub = build_subnetwork(w.spec(SPEC), blocks, emb).eval()
    n_sub = sum(p.numel() for p in sub.encoder.parameters())
    assert n_sub == CostModel(SPEC).params(w) < CostModel(SPEC).params(Widths.of(SPEC))
    ids, mask = inputs()
    with torch.no_grad():
        assert sub(ids, mask).shape == (3, 10, 24)
    with pytest.raises(PayloadError):
        build_subnetwork(Widths((4, 4), (40, 40)).spec(SPEC), blocks, emb)


@pytest.mark.parametrize("unit", ["params", "memory", "flops"])
def test_budget_is_respected_on_the_built_model(unit):
    cm = CostModel(MINILM, unit, seq=64, batch=16)
    for budget in (0.3, 0.5, 0.6):
        w = largest_uniform(cm, budget)
        assert cm.fraction(w) <= budget
        assert cm.fraction(w) > budget - 0.1  # the largest that fits, not a tiny one
    w = largest_uniform(CostModel(MINILM, "params"), 0.5)
    with torch.device("meta"):
        sub, full = Bert(w.spec(MINILM)), Bert(MINILM)
    n = lambda m: sum(p.numel() for p in m.encoder.parameters())  # noqa: E731
    assert n(sub) <= 0.5 * n(full)
    assert w.heads[0] == 6 and 700 < w.ffn[0] <= 768  # balanced: ~half of heads and FFN


def test_rejection_sampling_fits_and_is_seeded():
    cm = CostModel(MINILM, "params")
    a = choose_widths(cm, 0.6, "sample", torch.Generator().manual_seed(3))
    b = choose_widths(cm, 0.6, "sample", torch.Generator().manual_seed(3))
    assert a == b and cm.fraction(a) <= 0.6
    with pytest.raises(ConfigError, match="below the smallest"):
        largest_uniform(cm, 0.001)


def test_coverage_mean_matches_hand_computation():
    base = {"encoder.layer.0.output.dense.weight": torch.full((3, 3), 9.0)}
    key = "encoder.layer.0.output.dense.weight"
    a = {key: torch.full((1, 2), 1.0)}  # holds entries (0,0), (0,1); 1 example
    b = {key: torch.full((2, 3), 4.0)}  # holds rows 0-1; 3 examples
    got = coverage_mean(base, [a, b], [1, 3])[key]
    want = torch.tensor([[3.25, 3.25, 4.0], [4.0, 4.0, 4.0], [9.0, 9.0, 9.0]])
    assert torch.allclose(got, want)
    got = coverage_mean(base, [a, b], [1, 3], rule="all_clients")[key]
    want = torch.tensor([[3.25, 3.25, 3.0], [3.0, 3.0, 3.0], [9.0, 9.0, 9.0]])
    assert torch.allclose(got, want)
    with pytest.raises(PayloadError, match="does not fit"):
        coverage_mean(base, [{key: torch.zeros(4, 3)}], [1])


def test_unchanged_subnetworks_aggregate_to_the_same_model():
    full = random_bert().state_dict()
    subs = [extract(full, w, SPEC.head_dim) for w in
            (Widths((1, 2), (5, 40)), Widths((4, 4), (40, 40)), Widths((2, 2), (20, 3)))]
    merged = coverage_mean(full, subs, [5, 1, 2])
    assert all(torch.allclose(merged[k], full[k], atol=1e-6) for k in full)


def tiers(**over):
    return {"resources.tiers": {"small": 0.3, "medium": 0.6, "large": 1.0},
            "resources.proportions": {"small": 0.3, "medium": 0.4, "large": 0.3},
            "model.finetune": "full", **over}


@pytest.mark.parametrize("algorithm", ["raffm", "heterofl"])
def test_run_reports_budgets_and_bytes_per_client(tiny_cfg, algorithm):
    from fedfm.run import run

    cfg = tiny_cfg(algorithm=algorithm, **tiers())
    s = run(cfg, quiet=True)
    assert s["acc_global"] is not None
    rows = [json.loads(x) for x in open(f"{cfg.out}/metrics.jsonl")]
    assert all(r.get("rejected", 0) == 0 for r in rows)
    by_tier = {c["tier"]: c for c in s["clients"]}
    assert set(by_tier) == {"small", "medium", "large"}
    for c in s["clients"]:
        assert c["params_fraction"] <= c["budget"] and c["sub_params"] > 0
        assert c["bytes_sent"] > 0 and c["train_rounds"] == 2
    assert by_tier["small"]["bytes_sent"] < 0.5 * by_tier["large"]["bytes_sent"]
    assert sum(c["bytes_sent"] for c in s["clients"]) < s["bytes_up"]  # + headers


def test_lora_on_subnetworks_uploads_factors_and_merges(tiny_cfg):
    from fedfm.algorithms.raffm import RaFFM, RaFFMOptions

    cfg = tiny_cfg(algorithm="raffm", **tiers(**{"model.finetune": "lora"}))
    from fedfm.algorithms.env import from_config

    algo = RaFFM(RaFFMOptions(), from_config(cfg, 4, 4))
    w = torch.randn(8, 5)
    algo.global_ = {"backbone.encoder.layer.0.attention.self.query.weight": w}
    a, b = torch.randn(4, 3), torch.randn(6, 4)
    got = algo._as_weights({"backbone.encoder.layer.0.attention.self.query.lora_A": a,
                            "backbone.encoder.layer.0.attention.self.query.lora_B": b})
    scale = cfg.model.lora_alpha / cfg.model.lora_rank
    want = w[:6, :3] + scale * b @ a
    assert torch.allclose(got["backbone.encoder.layer.0.attention.self.query.weight"], want)


def test_lora_run_is_accepted_and_changes_the_model(tiny_cfg):
    from safetensors.torch import load_file

    from fedfm.run import run

    cfg = tiny_cfg(algorithm="raffm", rounds=1, **tiers(**{"model.finetune": "lora"}))
    s = run(cfg, quiet=True)
    rows = [json.loads(x) for x in open(f"{cfg.out}/metrics.jsonl")]
    assert rows[0].get("rejected", 0) == 0 and s["bytes_up"] < 60_000  # factors, not weights
    g = load_file(f"{cfg.out}/final/global.safetensors")
    assert "backbone.encoder.layer.0.attention.self.query.weight" in g


def test_bad_options_are_config_errors(tiny_cfg):
    with pytest.raises(ConfigError, match="sizing"):
        tiny_cfg(algorithm="raffm", **{"raffm.sizing": "greedy"})
    with pytest.raises(ConfigError, match="aggregation"):
        tiny_cfg(algorithm="heterofl", **{"heterofl.aggregation": "mean"})


def test_export_loads_in_transformers_and_matches(tiny_cfg, tmp_path):
    from transformers import AutoModel

    from fedfm.export.budget import export
    from fedfm.run import run

    cfg = tiny_cfg(algorithm="raffm", rounds=1, **tiers())
    run(cfg, quiet=True)
    r = export(cfg.out, 0.7, tmp_path / "exp", repeats=1, batch=4)
    assert r["params_fraction"] <= 0.7 and r["max_abs_diff_vs_fedfm"] < 1e-5
    assert r["heads"] == [4, 4] and r["ffn"][0] < 64  # vanilla BERT: all heads, FFN cut
    hf = AutoModel.from_pretrained(str(tmp_path / "exp"))
    assert hf.config.intermediate_size == r["ffn"][0]
    e = export(cfg.out, 0.5, tmp_path / "el", shape="elastic", repeats=1, batch=4)
    assert e["params_fraction"] <= 0.5 and e["heads"][0] < 4
    with pytest.raises(ConfigError, match="shape elastic"):
        export(cfg.out, 0.3, tmp_path / "small")
    with pytest.raises(ConfigError, match="not empty"):
        export(cfg.out, 0.7, tmp_path / "exp")
