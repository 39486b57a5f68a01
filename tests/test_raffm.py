"""RaFFM: SPP is function-preserving, extract/scatter is exact, budgets hold, the
coverage-normalised mean matches a hand computation, runs and exports work end to end."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from fedfm.algorithms.aggregation import masked_mean
from fedfm.core.errors import ConfigError, PayloadError
from fedfm.models.classifier import Classifier, set_tensors
from fedfm.models.elastic import Widths
from fedfm.models.hf_elastic import extract, fuse, spp
from fedfm.models.hf_raffm import HFCost, frozen_params, geometry_of, server_tensors, sub_classifier
from fedfm.models.loading import tiny_hf_bert
from fedfm.models.sizing import choose_widths, largest_uniform

# Formerly on fedfm's hand-written BERT; now on transformers' BertModel (tiny-bert: hidden 32,
# 4 heads of 8, FFN 64, 2 blocks) and real MiniLM, through models/hf_elastic.py / hf_raffm.py.
HD = 8
Q = "backbone.encoder.layer.{}.attention.self.query.weight"


def random_bert(seed: int = 0, std: float = 0.3):
    """A tiny-bert Classifier with weights at a large std (so a wrong permutation shows)."""
    clf = Classifier(tiny_hf_bert(seed), 3).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return clf, geometry_of(clf)


def inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def with_tensors(clf, geo, tensors):
    set_tensors(clf, fuse(tensors, geo))
    return clf


@functools.lru_cache(maxsize=1)
def minilm():
    from fedfm.models.hf.loading import load_hf_backbone
    from fedfm.models.loading import minilm_path

    clf = Classifier(load_hf_backbone(minilm_path()), 5)
    geo = geometry_of(clf)
    return clf, geo, server_tensors(clf, geo)


def minilm_cost(unit: str = "params") -> HFCost:
    clf, geo, t = minilm()
    return HFCost(geo, t, frozen_params(clf, geo), 384, unit, seq=64, batch=16)


def test_spp_preserves_outputs_and_sorts_saliency():
    clf, geo = random_bert()
    state = server_tensors(clf, geo)
    ordered = spp(state, geo)
    ids, mask = inputs()
    with torch.no_grad():
        before = clf(ids, mask)
        after = with_tensors(clf, geo, ordered)(ids, mask)
    assert torch.allclose(before, after, atol=1e-5)
    key = "backbone.encoder.layer.0.intermediate.dense.weight"
    assert not torch.equal(state[key], ordered[key])  # it really reordered
    w1, w2 = ordered[key], ordered["backbone.encoder.layer.0.output.dense.weight"]
    score = w1.abs().sum(1) + w2.abs().sum(0)
    assert torch.all(score[:-1] >= score[1:])  # most salient neuron first
    q = ordered[Q.format(1)].view(4, HD, -1)
    k = ordered[Q.format(1).replace("query", "key")].view(4, HD, -1)
    s = q.abs().sum(-1) + k.abs().sum(-1)  # (heads, head_dim): sorted within each head (no RoPE)
    assert torch.all(s[:, :-1] >= s[:, 1:])


def test_permuting_q_without_k_breaks_the_function():
    """The negative control: SPP must move q and k rows jointly (the test above can fail)."""
    clf, geo = random_bert()
    state = server_tensors(clf, geo)
    name = Q.format(0)
    rows = torch.cat([h * HD + torch.arange(HD).flip(0) for h in range(4)])
    ids, mask = inputs()
    with torch.no_grad():
        ref = clf(ids, mask)
        state[name] = state[name][rows]
        state[name.replace("weight", "bias")] = state[name.replace("weight", "bias")][rows]
        gap = (ref - with_tensors(clf, geo, state)(ids, mask)).abs().max()
    assert gap > 1e-3


def test_extract_then_scatter_is_identity_and_touches_only_the_prefix():
    clf, geo = random_bert()
    full = spp(server_tensors(clf, geo), geo)
    w = Widths((2, 1), (10, 25))
    sub = extract(full, geo, w)
    back = masked_mean([sub], [1.0], full)  # scatter = the mean of one holder
    assert all(torch.equal(back[k], full[k]) for k in full)
    q = Q.format(0)
    assert sub[q].shape == (2 * HD, 32)
    assert sub["backbone.encoder.layer.1.output.dense.weight"].shape == (32, 25)
    changed = masked_mean([{q: sub[q] + 1}], [1.0], full)
    assert torch.equal(changed[q][: 2 * HD], full[q][: 2 * HD] + 1)
    assert torch.equal(changed[q][2 * HD:], full[q][2 * HD:])


def test_subnetwork_is_a_real_smaller_bert_equal_to_its_slices():
    clf, geo = random_bert()
    full = server_tensors(clf, geo)
    cost = HFCost(geo, full, frozen_params(clf, geo), 32)
    w = Widths((2, 3), (16, 8))
    sub = sub_classifier(clf, geo, w, extract(full, geo, w))
    n_sub = sum(p.numel() for p in sub.backbone.blocks.parameters())
    assert n_sub == cost.params(w) < cost.params(Widths.of(cost.spec))
    ids, mask = inputs()
    with torch.no_grad():
        assert sub.backbone(ids, mask).shape == (3, 10, 32)
    with pytest.raises(PayloadError, match="do not match widths"):
        sub_classifier(clf, geo, Widths((4, 4), (64, 64)), extract(full, geo, w))


@pytest.mark.parametrize("unit", ["params", "memory", "flops"])
def test_budget_is_respected_on_the_built_model(unit):
    cm = minilm_cost(unit)
    for budget in (0.3, 0.5, 0.6) if unit != "memory" else (0.6, 0.8):
        w = largest_uniform(cm, budget)
        assert cm.fraction(w) <= budget
        assert cm.fraction(w) > budget - 0.1  # the largest that fits, not a tiny one
    clf, geo, t = minilm()
    w = largest_uniform(minilm_cost("params"), 0.5)
    n = lambda ts: sum(v.numel() for k, v in ts.items() if k.startswith(geo.blocks))  # noqa: E731
    assert n(extract(t, geo, w)) <= 0.5 * n(t)
    assert w.heads[0] == 6 and 700 < w.ffn[0] <= 768  # balanced: ~half of heads and FFN


def test_rejection_sampling_fits_and_is_seeded():
    cm = minilm_cost("params")
    a = choose_widths(cm, 0.6, "sample", torch.Generator().manual_seed(3))
    b = choose_widths(cm, 0.6, "sample", torch.Generator().manual_seed(3))
    assert a == b and cm.fraction(a) <= 0.6
    with pytest.raises(ConfigError, match="below the smallest"):
        largest_uniform(cm, 0.001)


def test_masked_mean_of_prefix_slices_matches_hand_computation():
    base = {"encoder.layer.0.output.dense.weight": torch.full((3, 3), 9.0)}
    key = "encoder.layer.0.output.dense.weight"
    a = {key: torch.full((1, 2), 1.0)}  # holds entries (0,0), (0,1); 1 example
    b = {key: torch.full((2, 3), 4.0)}  # holds rows 0-1; 3 examples
    got = masked_mean([a, b], [1, 3], base)[key]
    want = torch.tensor([[3.25, 3.25, 4.0], [4.0, 4.0, 4.0], [9.0, 9.0, 9.0]])
    assert torch.allclose(got, want)
    got = masked_mean([a, b], [1, 3], base, "all_clients")[key]
    want = torch.tensor([[3.25, 3.25, 3.0], [3.0, 3.0, 3.0], [9.0, 9.0, 9.0]])
    assert torch.allclose(got, want)
    with pytest.raises(PayloadError, match="does not fit"):
        masked_mean([{key: torch.zeros(4, 3)}], [1], base)


def test_unchanged_subnetworks_aggregate_to_the_same_model():
    clf, geo = random_bert()
    full = server_tensors(clf, geo)
    subs = [extract(full, geo, w) for w in
            (Widths((1, 2), (5, 64)), Widths((4, 4), (64, 64)), Widths((2, 2), (20, 3)))]
    merged = masked_mean(subs, [5, 1, 2], full)
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
    algo = RaFFM(cfg, RaFFMOptions(), 4)
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
