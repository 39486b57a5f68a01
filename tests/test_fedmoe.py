"""FedMoE / randomMoE: MoE layer identities, activation shares, memory search, modular
aggregation, expert recommendation, and tiny end-to-end runs."""

import copy
import json

import pytest
import torch

from fedfm.algorithms.expert_rec import RecState, observe, recommend, reference_set
from fedfm.algorithms.submoe import (
    MemoryModel,
    build_submoe,
    expert_of,
    read_flat,
    search_threshold,
    select_by_threshold,
    select_keys,
    submodel_memory,
    to_flat,
    write_flat,
)
from fedfm.config import build_config
from fedfm.core.errors import ConfigError
from fedfm.models.classifier import Classifier
from fedfm.models.loading import tiny_hf_bert
from fedfm.models.moe import (
    MoEOutput,
    activation_shares,
    balance_loss,
    moe_blocks,
    set_held,
    to_moe,
)
from fedfm.run import run
from tests.conftest import assert_clean_run, tiny_raw

MOE_RES = {"unit": "memory", "tiers": {"small": 0.5, "large": 1.0},
           "proportions": {"small": 0.5, "large": 0.5}}


def _bert():
    return tiny_hf_bert(0)  # transformers' BertModel, wrapped


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 10), generator=gen)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("build", ["moefy", "upcycle"])
def test_moe_with_all_experts_on_equals_dense(build):
    dense = _bert()
    ids, mask = _batch()
    ref = dense(ids, mask)
    moe = copy.deepcopy(dense)
    to_moe(moe, num_experts=4, top_k=4, build=build, seed=0)
    assert torch.allclose(moe(ids, mask), ref, atol=1e-5)
    if build == "upcycle":  # copies of one FFN: any top-k gives the dense output
        for blk in moe_blocks(moe):
            blk.moe.router.top_k = 1
        assert torch.allclose(moe(ids, mask), ref, atol=1e-5)
    else:  # MoEfication with half the experts is a different (sparser) function
        for blk in moe_blocks(moe):
            blk.moe.router.top_k = 2
        assert not torch.allclose(moe(ids, mask), ref, atol=1e-3)


def test_moefy_splits_neurons_into_equal_groups_keeping_weights():
    dense = _bert()
    w1 = dense.blocks[0].intermediate.dense.weight.clone()
    to_moe(dense, 4, 2, "moefy", 0)
    experts = moe_blocks(dense)[0].moe.experts
    rows = torch.cat([ex.dense_in.weight for ex in experts])
    assert all(ex.dense_in.weight.shape[0] == 16 for ex in experts)
    # every dense neuron appears in exactly one expert
    assert torch.equal(torch.sort(rows, dim=0).values, torch.sort(w1, dim=0).values)


def test_forward_returns_aux_loss_and_shares_sum_to_one():
    bert = _bert()
    to_moe(bert, 4, 2, "moefy", 0)
    ids, mask = _batch()
    set_held(bert, [[0, 2, 3], [1, 3]])
    bert(ids, mask)
    out = moe_blocks(bert)[0].last
    assert isinstance(out, MoEOutput) and out.aux_loss.ndim == 0
    assert float(out.load.sum()) == 2 * int(mask.sum())  # top-2 of the real tokens only
    p = activation_shares(bert, bert, [(ids, mask)])
    assert p.shape == (2, 4)
    assert torch.allclose(p.sum(1), torch.ones(2, dtype=torch.float64))
    assert p[0, 1] == 0 and p[1, 0] == 0 and p[1, 2] == 0  # unheld experts get no tokens


def test_balance_loss_hand_computed():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4]])  # (N=2, E=2)
    idx = torch.tensor([[0], [1]])  # top-1: one token each
    aux, load = balance_loss(probs, idx, torch.tensor([True, True]))
    # f = (0.5, 0.5), P = (0.65, 0.35): aux = 2 * (0.5*0.65 + 0.5*0.35) = 1.0
    assert torch.equal(load, torch.tensor([1.0, 1.0]))
    assert abs(float(aux) - 1.0) < 1e-6
    aux, _ = balance_loss(probs, torch.tensor([[0], [0]]), torch.tensor([True, True]))
    assert abs(float(aux) - 2 * 0.65) < 1e-6  # all tokens on expert 0: unbalanced, larger


def _moe_classifier(rank=2):
    from fedfm.models.lora import inject_lora

    bert = _bert()
    to_moe(bert, 4, 2, "moefy", 0)
    model = Classifier(bert, 3, "mean", 0)
    for p in bert.parameters():
        p.requires_grad_(False)
    inject_lora(bert, ("dense_in", "dense_out"), rank, 2.0 * rank, 0)
    for blk in moe_blocks(bert):
        blk.moe.router.weight.requires_grad_(True)
    return model


def test_memory_model_equals_built_submodel():
    model = _moe_classifier()
    mem = MemoryModel.of(model)
    assert mem.full == submodel_memory(model)
    for held in ([[0], [3]], [[1, 2], [0, 1, 2, 3]], [[0, 1, 2, 3], [2]]):
        sub = build_submoe(model, held)
        assert mem.cost(held) == submodel_memory(sub)
        assert [len(b.moe.experts) for b in moe_blocks(sub)] == [len(h) for h in held]


def test_search_respects_budget_and_is_monotone():
    model = _moe_classifier()
    mem = MemoryModel.of(model)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    assert select_by_threshold(p, 0.8) == [[0, 1], [1, 2, 3]]  # 0.4+0.3 < 0.8
    assert select_by_threshold(p, 0.0) == [[0], [3]]
    low, high = mem.cost([[0], [3]]), mem.full
    prev = None
    for limit in torch.linspace(low, high, 9).tolist():
        plan = search_threshold(p, mem, limit)
        assert plan.fits and plan.memory <= limit
        assert plan.memory == submodel_memory(build_submoe(model, plan.held))
        if prev is not None:  # more budget: theta and every expert set only grow
            assert plan.theta >= prev.theta
            assert all(set(a) <= set(b) for a, b in zip(prev.held, plan.held))
        # the next larger theta would not fit: the search is tight
        bigger = [h for h in (select_by_threshold(p, t) for t in (plan.theta + 1e-6,))]
        assert mem.cost(bigger[0]) > limit or plan.held == bigger[0]
        prev = plan
    assert prev.held == [[0, 1, 2, 3]] * 2
    assert not search_threshold(p, mem, low - 1).fits


def test_flat_keys_and_router_rows_roundtrip():
    model = _moe_classifier()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    flat = to_flat({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    row = "backbone.encoder.layer.1.moe.router.weight.2"
    assert expert_of(row) == (1, 2)
    assert expert_of("backbone.encoder.layer.0.moe.experts.3.dense_in.lora_A") == (0, 3)
    assert expert_of("head.weight") is None
    keys = select_keys(flat, [[0], [2, 3]])
    assert row in keys and "backbone.encoder.layer.1.moe.router.weight.1" not in keys
    assert "head.weight" in keys
    write_flat(model, {row: torch.full((32,), 7.0)})
    assert torch.equal(read_flat(model, [row])[row], torch.full((32,), 7.0))
    assert len(names) < len(flat)


def _cfg_plain():
    return build_config(tiny_raw())


def test_modular_aggregation_hand_computed_and_unheld_bit_identical():
    server = {"dense": torch.tensor([1.0, 1.0]),
              "backbone.encoder.layer.0.moe.experts.0.dense_in.lora_A": torch.tensor([0.0]),
              "backbone.encoder.layer.0.moe.experts.1.dense_in.lora_A": torch.tensor([5.0]),
              "backbone.encoder.layer.0.moe.router.weight.2": torch.tensor([0.1234567])}
    e0, e1, r2 = list(server)[1:]
    a = {"dense": torch.tensor([2.0, 4.0]), e0: torch.tensor([3.0])}
    b = {"dense": torch.tensor([5.0, 1.0]), e0: torch.tensor([6.0]), e1: torch.tensor([0.3])}
    from fedfm.algorithms.aggregation import masked_aggregate

    agg, _ = masked_aggregate(_cfg_plain(), 0, [a, b], [1.0, 2.0], server)
    out = {**server, **agg}  # what FedMoE's server keeps: unsent experts untouched
    assert torch.allclose(out["dense"], torch.tensor([4.0, 2.0]))  # (1·a + 2·b) / 3
    assert torch.allclose(out[e0], torch.tensor([5.0]))
    assert torch.equal(out[e1], torch.tensor([0.3]))  # one holder: its copy, exactly
    assert out[r2] is server[r2]  # nobody holds it: the very same tensor


def test_recommend_adds_and_drops_from_reference_set():
    p1 = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    p2 = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    own = [[3]]
    # references hold 3 experts: add the 2 outside experts with highest weighted p̂
    new = recommend(own, [(p1, [[1, 2, 3]], 3.0), (p2, [[0, 1, 2]], 1.0)])
    assert new == [[1, 2, 3]]  # p̂ = (3 p1 + p2) / 4 = (.175, .225, .275, .325): add 2 and 1
    new = recommend([[0, 1, 2, 3]], [(p1, [[3]], 1.0)])  # refs hold 1: drop 3 lowest p̂
    assert new == [[3]]
    profiles = {0: p1, 1: p2, 2: p1 * 2}
    assert [j for j, _ in reference_set(0, profiles, 1)] == [2]


def test_recommendation_reverts_and_freezes():
    st = RecState()
    assert observe(st, 0.5, patience=1) == "none"  # first score: best
    assert observe(st, 0.6, patience=1) == "none"  # improved
    assert observe(st, 0.6, patience=1) == "recommend"  # stalled
    st.trial_prev, st.trial_score = [[0]], 0.6  # the server changed the structure
    assert observe(st, 0.55, patience=1) == "revert" and st.frozen
    st.trial_prev = st.trial_score = None
    assert observe(st, 0.1, patience=1) == "none" and observe(st, 0.1, patience=1) == "none"
    ok = RecState(best=0.6, trial_prev=[[0]], trial_score=0.6)
    assert observe(ok, 0.7, patience=1) == "accept" and not ok.frozen and ok.best == 0.7


def _cfg(tmp_path, algo, **over):
    over.setdefault("resources", MOE_RES)
    raw = tiny_raw(algorithm=algo, rounds=3, out=str(tmp_path / algo), **over)
    raw.setdefault(algo, {}).update({"num_experts": 4, "top_k": 2})
    return build_config(raw)


def _half_expert_budget(tmp_path) -> float:
    """The memory fraction that holds the dense part + half of the experts (tiny model)."""
    from fedfm.sim.world import build_world

    mem = build_world(_cfg(tmp_path, "randommoe")).algorithm.mem
    return (mem.dense + sum(map(sum, mem.expert)) / 2) / mem.full


@pytest.mark.parametrize("algo,scope", [("fedmoe", "experts"), ("randommoe", "model")])
def test_end_to_end_per_client_summary(tmp_path, algo, scope):
    # half budget: "experts" scope = b_k of the experts; "model" = b_k of the full MoE's memory
    f = 0.5 if scope == "experts" else _half_expert_budget(tmp_path)
    res = {"unit": "memory", "per_client": [1.0, f, 1.0, f]}
    cfg = _cfg(tmp_path, algo, resources=res, **{f"{algo}.alpha": 1.0, f"{algo}.budget_of": scope})
    s = run(cfg, quiet=True)
    rows = [json.loads(x) for x in open(f"{cfg.out}/metrics.jsonl")]
    assert s["acc_global"] is None
    assert_clean_run(s, rows)
    stages = [r["stage"] for r in rows]
    assert stages == ([1, 2, 2] if algo == "fedmoe" else [2, 2, 2])
    full_mb = max(c["memory_mb"] for c in s["clients"])
    for c in s["clients"]:
        assert len(c["experts_per_layer"]) == 2 and c["experts"] == sum(c["experts_per_layer"])
        assert c["memory_mb"] > 0 and c["bytes_sent"] > 0
        if c["id"] % 2:  # half budget: at most half of the 8 experts, within its memory
            assert 2 <= c["experts"] <= 4 and c["memory_mb"] < full_mb
            if scope == "model":
                assert c["memory_mb"] <= f * full_mb + 1e-3
    assert sum(c["experts"] for c in s["clients"] if c["id"] % 2 == 0) > 8


def test_stage2_payload_is_per_client_and_unheld_experts_unchanged(tmp_path):
    from fedfm.sim.world import build_world

    res = {"unit": "memory", "per_client": [0.5] * 4}
    world = build_world(_cfg(tmp_path, "randommoe", resources=res))
    algo = world.algorithm
    algo.init_server(world.model)
    tasks = algo.configure_train(0, [0, 1])
    held = [t.config["held"] for t in tasks]
    for t, h in zip(tasks, held):
        experts = {expert_of(k) for k in t.tensors if expert_of(k)}
        assert experts == {(i, e) for i, hs in enumerate(h) for e in hs}
    before = {k: v.clone() for k, v in algo.flat.items()}
    from fedfm.algorithms.base import ClientContext, ClientMemory

    ups = [algo.client_update(t, world.model, world.data.clients[t.client_id], ClientMemory(),
                              ClientContext(5, 0, t.client_id)) for t in tasks]
    algo.aggregate_train(0, ups)
    unheld = [k for k in before if expert_of(k) and not any(
        expert_of(k)[1] in h[expert_of(k)[0]] for h in held)]
    assert unheld and all(torch.equal(algo.flat[k], before[k]) for k in unheld)
    trained = [k for k in before if expert_of(k) and expert_of(k)[1] in held[0][expert_of(k)[0]]]
    assert any(not torch.equal(algo.flat[k], before[k]) for k in trained)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="build must be one of"):
        build_config(tiny_raw(algorithm="fedmoe", fedmoe={"build": "magic"}))
    with pytest.raises(ConfigError, match="resources.unit"):
        raw = tiny_raw(algorithm="fedmoe", out=str(tmp_path / "x"),
                       resources={**MOE_RES, "unit": "params"})
        run(build_config(raw), quiet=True)


def test_heads_per_task_and_same_task_estimate(tmp_path):
    from fedfm.algorithms.submoe import estimate_shares
    from fedfm.sim.world import build_world
    from fedfm.transport.messages import ClientUpdate

    world = build_world(_cfg(tmp_path, "fedmoe", resources={"unit": "memory"}))
    algo = world.algorithm
    algo.init_server(world.model)
    pa = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64)
    pb = torch.tensor([[0, 0, 0.5, 0.5], [0, 0, 0, 1.0]], dtype=torch.float64)
    ups = []
    for cid, task, p, fill in ((0, "a", pa, 1.0), (1, "b", pb, 3.0), (2, "a", pa, 2.0)):
        head = {k: torch.full_like(v, fill) for k, v in algo.init_head.items()}
        ups.append(ClientUpdate(0, cid, 10, head, {"task": task, "p": p.tolist()}))
    algo.aggregate_train(0, ups)  # round 0 = stage 1: reports kept
    assert torch.all(algo.flat["task[a].head.weight"] == 1.5)  # mean of clients 0 and 2
    assert torch.all(algo.flat["task[b].head.weight"] == 3.0)
    est = estimate_shares(algo.reports, "b", (2, 4))
    assert torch.equal(est, pb)  # a client of task b is estimated from task-b clients only
    payload = algo.configure_train(1, [1])[0].tensors  # stage 2: client 1 gets its task's head
    assert torch.all(payload["head.weight"] == 3.0)


def test_server_state_roundtrip_keeps_plans_and_recommendation(tmp_path):
    from fedfm.algorithms.expert_rec import RecState
    from fedfm.sim.world import build_world

    cfg = _cfg(tmp_path, "fedmoe", resources={"unit": "memory", "per_client": [1.0, 0.5, 1.0, 0.5]})
    a = build_world(cfg).algorithm
    a.init_server(a.model)
    tasks = a.configure_train(1, [0, 1, 2, 3])  # stage 2 from uniform estimates
    a.rec[1] = RecState(best=-0.3, stall=1, trial_prev=[[0], [1]], trial_score=-0.4)
    tensors, state = a.server_state()
    b = build_world(cfg).algorithm
    b.load_server_state(tensors, json.loads(json.dumps(state)))
    again = b.configure_train(1, [0, 1, 2, 3])
    assert [t.config["held"] for t in again] == [t.config["held"] for t in tasks]
    assert b.rec[1] == a.rec[1]


def test_moe_folder_roundtrip_and_fedmoe_starts_from_it(tmp_path):
    from fedfm.models.moe import load_moe_folder, save_moe_folder
    from fedfm.sim.world import build_world

    src = _bert()
    to_moe(src, 4, 2, "upcycle", seed=3)  # a different layout/seed than the default build
    with torch.no_grad():
        moe_blocks(src)[1].moe.experts[2].dense_in.weight.add_(0.5)
    save_moe_folder(src, tmp_path / "moe")
    dst = _bert()
    layout = load_moe_folder(dst, tmp_path / "moe")
    assert layout["mode"] == "upcycle" and layout["widths"] == [[64] * 4] * 2
    ids, mask = _batch()
    assert torch.equal(dst(ids, mask), src(ids, mask))
    world = build_world(_cfg(tmp_path, "fedmoe", **{"fedmoe.checkpoint": str(tmp_path / "moe")}))
    got = moe_blocks(world.model)[1].moe.experts[2].dense_in.weight
    assert torch.equal(got, moe_blocks(src)[1].moe.experts[2].dense_in.weight)
    with pytest.raises(ConfigError, match="not a fedfm MoE folder"):
        build_world(_cfg(tmp_path, "fedmoe", **{"fedmoe.checkpoint": str(tmp_path)}))


def test_propose_trims_additions_to_the_budget():
    from fedfm.algorithms.expert_rec import propose

    own = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    ref = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    held = {0: [[3]], 1: [[0, 1, 2, 3]]}
    cost = lambda h: sum(map(len, h))  # noqa: E731  (one unit per expert)
    assert propose(0, {0: own, 1: ref}, held, 1, cost, limit=10) == [[0, 1, 2, 3]]
    assert propose(0, {0: own, 1: ref}, held, 1, cost, limit=2) == [[2, 3]]  # kept highest own p
    assert propose(0, {0: own, 1: ref}, held, 1, cost, limit=1) == [[3]]


def test_fill_budget_ablation_adds_highest_p_experts_up_to_the_limit(tmp_path):
    """fedmoe.fill_budget (ablation, off by default): the threshold search stops at theta = 1
    with budget left when experts have p = 0; filling adds experts by p until alpha · M_k."""
    from fedfm.algorithms.submoe import fill_budget
    from fedfm.sim.world import build_world

    mem = MemoryModel(100, [[10, 10, 10, 10], [10, 10, 10, 10]])
    p = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.1, 0.0, 0.9]], dtype=torch.float64)
    assert fill_budget(p, [[0, 1], [1, 3]], mem, 165) == [[0, 1, 2], [0, 1, 3]]
    assert fill_budget(p, [[0, 1], [1, 3]], mem, 140) == [[0, 1], [1, 3]]  # nothing fits
    res = {"unit": "memory", "per_client": [1.0, 0.75, 1.0, 0.75]}
    held = {}
    for fill in (False, True):
        a = build_world(_cfg(tmp_path, "fedmoe", resources=res, **{
            "fedmoe.alpha": 1.0, "fedmoe.fill_budget": fill})).algorithm
        a.init_server(a.model)
        pr = torch.tensor([[0.6, 0.4, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
        a.reports = {0: (pr, 10, "main"), 2: (pr, 10, "main")}
        held[fill] = [t.config["held"] for t in a.configure_train(1, [0, 1, 2, 3])]
        assert all(pl.memory <= a.limit(c, 1.0) for c, pl in a.plans.items())
    assert held[False][1] == [[0, 1], [0]]  # theta = 1 reached with 3 of 8 experts
    assert sum(map(len, held[True][1])) == 6 and {0, 1} <= set(held[True][1][0])
    with pytest.raises(ConfigError):
        build_config(tiny_raw(algorithm="randommoe", randommoe={"fill_budget": True}))
