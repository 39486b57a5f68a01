"""FedMS: SAL schedule and bytes, frozen-prefix cache, MoFM gate, the two stages, privacy."""

from __future__ import annotations

import json

import pytest
import torch

from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.fedms import FedMS
from fedfm.core.errors import ConfigError
from fedfm.models.lora import lora_param_names, set_active_blocks
from fedfm.models.mofm import Gate, Tail, expert_forward, mixture_log_probs
from fedfm.models.sal import (
    PrefixSource,
    SALSchedule,
    cached_source,
    client_k,
    frozen_prefix,
)
from fedfm.run import run
from fedfm.sim.world import build_world
from fedfm.transport.messages import decode, encode, payload_bytes
from tests.conftest import assert_clean_run


def ctx(rnd=0, cid=0):
    return ClientContext(1234 + rnd, rnd, cid)


def world(tiny_cfg, **over):
    return build_world(tiny_cfg(algorithm="fedms", **over))


def test_schedule_orders_growth_and_budgets():
    s = SALSchedule(6, k0=1, step=2)
    assert [s.k(t) for t in range(8)] == [1, 2, 2, 3, 3, 4, 4, 5]
    assert s.active(0) == {5} and s.active(3) == {3, 4, 5}
    assert SALSchedule(6, k0=2, order="bottom-up").active(1) == {0, 1, 2}
    lin = SALSchedule(6, k0=0, growth="linear", ramp=3)
    assert [lin.k(t) for t in range(4)] == [2, 4, 6, 6]
    rnd = SALSchedule(6, k0=3, order="random", seed=7)
    assert len(rnd.active(0)) == 3 and rnd.active(0) == rnd.active(0)
    assert any(rnd.active(t) != rnd.active(0) for t in range(1, 6))
    assert [client_k(5, b) for b in (1.0, 0.6, 0.3, 0.1)] == [5, 3, 1, 1]
    assert client_k(0, 0.5) == 0
    assert s.active(5, budget=0.5) == {5, 4}  # k = 4 -> floor(0.5 * 4) = 2 top blocks


def test_k0_is_the_frozen_model_plus_head(tiny_cfg):
    w = world(tiny_cfg)
    model, algo = w.model, w.algorithm
    tensors = dict(algo.init)
    gen = torch.Generator().manual_seed(0)
    for n in tensors:
        if n.endswith("lora_B"):
            tensors[n] = torch.randn(tensors[n].shape, generator=gen)
    split = w.data.clients[0].train
    ids, mask = split.input_ids[:8], split.attention_mask[:8]
    L = model.backbone.spec.num_layers
    src = PrefixSource(model.backbone, split, L, "fp32")
    set_active_blocks(model.backbone, set())
    _, z0 = expert_forward(algo.tail, tensors, src.hidden(torch.arange(8), ids.shape[1]), mask, L)
    with torch.no_grad():
        frozen = model(ids, mask)  # LoRA inactive: the frozen backbone + head
    torch.testing.assert_close(z0, frozen)
    h0 = frozen_prefix(model.backbone, ids, mask, 0)
    set_active_blocks(model.backbone, set(range(L)))
    _, z_all = expert_forward(algo.tail, tensors, h0, mask, 0)
    assert not torch.allclose(z_all, frozen, atol=1e-3)  # the same LoRA, applied, does change it


def train_once(w, rnd, cid=0, memory=None):
    algo = w.algorithm
    (task,) = algo.configure_train(rnd, [cid])
    task = decode(encode(task))
    memory = memory if memory is not None else ClientMemory()
    update = algo.client_update(task, w.model, w.data.clients[cid], memory, ctx(rnd, cid))
    return task, update, memory


def test_bytes_up_are_exactly_the_active_tensors_and_grow_with_k(tiny_cfg):
    w = world(tiny_cfg, rounds=3, **{"fedms.k0": 0, "fedms.stage1_rounds": 3})
    w.algorithm.init_server(w.model)
    head = {"head.weight", "head.bias"}
    sizes = []
    for rnd in range(3):
        task, update, _ = train_once(w, rnd)
        active = set(task.config["active"])
        assert len(active) == rnd  # k(t) = 0, 1, 2 on the 2-block tiny BERT
        expected = {f"backbone.{n}" for n in lora_param_names(w.model.backbone, active)} | head
        assert set(update.tensors) == expected
        params = dict(w.model.named_parameters())
        assert payload_bytes(update.tensors) == sum(params[n].numel() * 4 for n in expected)
        sizes.append(payload_bytes(update.tensors))
    assert sizes[0] < sizes[1] < sizes[2]


def test_cached_prefix_gives_the_same_update(tiny_cfg):
    ups = []
    for cache in (True, False):
        w = world(tiny_cfg, **{"fedms.cache": cache, "fedms.k0": 1})
        w.algorithm.init_server(w.model)
        _, update, memory = train_once(w, 0)
        assert ("prefix.train" in memory.tensors) == cache
        assert update.metrics["prefix_cached"] == float(cache)
        ups.append(update.tensors)
    for k in ups[0]:
        torch.testing.assert_close(ups[0][k], ups[1][k], atol=1e-5, rtol=1e-4)


def test_cache_is_rebuilt_when_the_active_set_moves(tiny_cfg):
    w = world(tiny_cfg)
    bert, split = w.model.backbone, w.data.clients[0].train
    set_active_blocks(bert, set())
    store, state = {}, {}
    for start in (2, 1, 2, 0):  # down (rebuild from embeddings), up (advance), down again
        src = cached_source(bert, split, start, "fp32", store, state, "train", 1e9)
        rows = torch.arange(5)
        t = int(split.attention_mask[rows].sum(1).max())
        want = frozen_prefix(bert, split.input_ids[rows, :t], split.attention_mask[rows, :t], start)
        m = split.attention_mask[rows, :t].bool()
        torch.testing.assert_close(src.hidden(rows, t)[m], want[m], atol=1e-5, rtol=1e-4)
        assert state["prefix.train"][0] == start
    assert cached_source(bert, split, 1, "fp32", store, state, "train", 10).cache is None
    assert "prefix.train" not in store  # over the memory bound: nothing cached


def test_gate_weights_sum_to_one_and_mixture_is_a_distribution():
    gate = Gate(32, 4, tau=0.5, seed=0)
    h = torch.randn(10, 32)
    out = gate(h)
    torch.testing.assert_close(out.weights, torch.full((10, 2), 0.5))  # W_g = 0 at init
    with torch.no_grad():
        for p in gate.parameters():
            p.add_(torch.randn_like(p))
    out = gate(h)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(10))
    assert out.weights.std() > 0.01
    z1, z2 = torch.randn(10, 5), torch.randn(10, 5)
    mix = mixture_log_probs(out.log_weights, [z1, z2]).exp()
    torch.testing.assert_close(mix.sum(-1), torch.ones(10))
    want = out.weights[:, :1] * z1.softmax(-1) + out.weights[:, 1:] * z2.softmax(-1)
    torch.testing.assert_close(mix, want)


def test_stage_switch_and_local_expert_never_uploaded(tiny_cfg, monkeypatch):
    seen = []
    original = FedMS.client_update

    def spy(self, task, model, data, memory, c):
        update = original(self, task, model, data, memory, c)
        local = {k: v.clone() for k, v in memory.tensors.items() if k.startswith("local.")}
        seen.append((task.config["stage"], dict(update.tensors), local))
        return update

    monkeypatch.setattr(FedMS, "client_update", spy)
    cfg = tiny_cfg(algorithm="fedms", rounds=4, **{"fedms.stage1_rounds": 2})
    s = run(cfg, quiet=True)
    rows = [json.loads(x) for x in open(f"{cfg.out}/metrics.jsonl")]
    assert [r["stage"] for r in rows] == [1, 1, 2, 2]
    assert rows[0]["gate_local_mean"] is None and 0 < rows[3]["gate_local_mean"] < 1
    assert rows[3]["bytes_up"] < rows[1]["bytes_up"]  # stage 2 sends the gate only (tiny model)
    stage2 = [(up, local) for stage, up, local in seen if stage == 2]
    assert stage2 and all(local for _, local in stage2)
    for up, local in stage2:
        assert all(k.startswith("gate.") for k in up)
        for t in up.values():
            assert not any(t.shape == v.shape and torch.equal(t, v) for v in local.values())
    assert all("acc_local_expert" in c for c in s["clients"])
    assert_clean_run(s, rows)


def test_global_expert_keeps_training_when_asked(tiny_cfg):
    w = world(tiny_cfg, rounds=2, **{"fedms.stage1_rounds": 0, "fedms.global_in_stage2": True})
    w.algorithm.init_server(w.model)
    _, update, memory = train_once(w, 0)
    assert any(k.startswith("gate.") for k in update.tensors)
    assert {"head.weight", "head.bias"} <= set(update.tensors)
    assert not any(torch.equal(update.tensors["head.weight"], v) for k, v in
                   memory.tensors.items() if k.startswith("local."))


def test_partial_mean_averages_over_senders_only():
    from fedfm.algorithms.aggregation import masked_mean

    a = {"x": torch.tensor([1.0]), "y": torch.tensor([10.0])}
    b = {"x": torch.tensor([4.0])}
    out = masked_mean([a, b], [1.0, 2.0])
    torch.testing.assert_close(out["x"], torch.tensor([3.0]))
    torch.testing.assert_close(out["y"], torch.tensor([10.0]))


@pytest.mark.parametrize("key,value,match", [
    ("fedms.order", "sideways", "top-down"),
    ("fedms.tau", 0.0, "tau"),
    ("fedms.stage1_rounds", 9, "exceeds rounds"),
    ("fedms.k0", 5, "exceeds the model"),
])
def test_bad_options_are_clear_errors(tiny_cfg, key, value, match):
    with pytest.raises(ConfigError, match=match):
        build_world(tiny_cfg(algorithm="fedms", **{key: value}))


def test_tail_names_match_the_classifier(tiny_cfg):
    w = world(tiny_cfg)
    names = {n for n, _ in Tail(w.model.backbone, w.model.head, "mean").named_parameters()}
    assert names == {n for n, _ in w.model.named_parameters()}


@pytest.mark.parametrize("opts", [
    {"fedms.order": "random", "fedms.inactive": "frozen", "fedms.budget_k": True,
     "resources.per_client": [0.5, 1.0, 0.5, 1.0]},
    {"fedms.order": "bottom-up", "fedms.growth": "linear", "fedms.cache": False,
     "fedms.gate_input": "global", "fedms.local_ce_weight": 0.5},
    {"fedms.sal_stage2": False, "fedms.global_in_stage2": True, "fedms.k0": 0, "fedms.tau": 0.5},
])
def test_option_combinations_run(tiny_cfg, opts):
    cfg = tiny_cfg(algorithm="fedms", rounds=3, **{"fedms.stage1_rounds": 1}, **opts)
    s = run(cfg, quiet=True)
    rows = [json.loads(x) for x in open(f"{cfg.out}/metrics.jsonl")]
    assert [r["stage"] for r in rows] == [1, 2, 2]
    assert_clean_run(s, rows)  # the validator accepts every upload
