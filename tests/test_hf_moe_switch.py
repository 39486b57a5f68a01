"""Switch Transformers (ModuleDict experts, top-1 router with capacity, encoder-decoder) under
FedMoE: encoder-only classification and sequence-to-sequence generation."""

import pytest
import torch

from fedfm.algorithms.submoe import expert_of, submodel_memory
from fedfm.config import build_config
from fedfm.models.hf import moe as M
from fedfm.models.hf.loading import load_hf_backbone
from fedfm.run import run
from tests.moe_tiny import moe_folder, save_tiny_moe_lm
from tests.test_hf_moe import _batch, _learns, _raw
from tests.test_hf_moe_generate import _check, moe_gen_raw

HELD = [[1, 3], [0, 2, 3]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return moe_folder(tmp_path_factory.mktemp("switch"), "switch_transformers")


def test_switch_counts_cut_equals_masked(folder):
    bb = load_hf_backbone(folder, None, 0.0, torch.float32)
    bb.eval()  # no router jitter: deterministic
    ids, mask = _batch()
    ref = bb(ids, mask)
    M.attach(bb, bb)
    bb.requires_grad_(False)
    M.add_expert_lora(bb, 4, 8.0, seed=0)
    assert torch.equal(bb(ids, mask), ref)  # hooks + zero-B LoRA: bit-identical
    assert M.loads(bb).sum(1).tolist() == [int(mask.sum())] * 2  # top-1, real tokens only
    M.set_held(bb, HELD)
    masked = bb(ids, mask)
    loads = M.loads(bb)
    assert all(loads[i, e] == 0 for i, h in enumerate(HELD) for e in range(4) if e not in h)
    M.set_held(bb, None)
    sub = M.cut(bb, HELD)
    assert torch.equal(sub(ids, mask), masked)
    assert torch.equal(M.loads(sub), loads)
    for (ex, rt), h in zip(M.moe_layers(sub), HELD):  # only the held experts exist
        assert sorted(ex.keys()) == [f"expert_{e}" for e in h]
        assert rt.classifier.weight.shape[0] == len(h)
    n_full, n_sub = (sum(p.numel() for p in m.parameters()) for m in (bb, sub))
    ex0, rt0 = M.moe_layers(bb)[0]
    per = sum(p.numel() for p in ex0["expert_0"].parameters()) + rt0.classifier.weight[0].numel()
    assert n_full - n_sub == per * sum(4 - len(h) for h in HELD)
    assert submodel_memory(sub) < submodel_memory(bb)


@pytest.mark.slow
def test_fedmoe_classifies_on_switch_encoder(folder, tmp_path):
    raw = _raw(folder, "fedmoe", tmp_path)
    raw["fedmoe"]["top_k"] = 1
    _learns(run(build_config(raw), quiet=True), raw["out"])


def test_switch_refuses_top_k_2(folder, tmp_path):
    raw = _raw(folder, "randommoe", tmp_path, rounds=1)
    with pytest.raises(Exception, match="top_k = 1"):
        run(build_config(raw), quiet=True)


def _seq2seq_raw(tmp_path):
    save_tiny_moe_lm(tmp_path / "lm-switch_transformers", "switch_transformers")
    raw = moe_gen_raw(tmp_path, "switch_transformers", "randommoe", rounds=4)
    raw["randommoe"]["top_k"] = 1
    raw["model"]["lora_targets"] = ["q", "v"]
    return raw


def test_switch_seq2seq_unheld_experts_bit_identical(tmp_path):
    """task = generate as sequence-to-sequence: encoder and decoder MoE blocks are profiled,
    cut and aggregated per expert (decoder blocks are MoE block ids 1000 + i)."""
    from fedfm.algorithms.base import ClientContext, ClientMemory
    from fedfm.sim.world import build_world

    world = build_world(build_config(_seq2seq_raw(tmp_path)))
    algo = world.algorithm
    assert algo.layers == [0, 1, 1000, 1001]  # encoder blocks 0-1, decoder blocks 0-1
    algo.init_server(world.model)
    tasks = algo.configure_train(0, [1, 2])
    held = [dict(zip(algo.layers, t.config["held"])) for t in tasks]
    before = {k: v.clone() for k, v in algo.flat.items()}
    ups = [algo.client_update(t, world.model, world.data.clients[t.client_id], ClientMemory(),
                              ClientContext(5, 0, t.client_id)) for t in tasks]
    assert all(torch.tensor(u.metrics["p"]).shape == (4, 4) for u in ups)
    assert all(abs(sum(row) - 1) < 1e-9 for u in ups for row in u.metrics["p"])
    algo.aggregate_train(0, ups)
    unheld = [k for k in before if expert_of(k) and not any(
        expert_of(k)[1] in h[expert_of(k)[0]] for h in held)]
    assert any(expert_of(k)[0] >= 1000 for k in unheld)
    assert unheld and all(torch.equal(algo.flat[k], before[k]) for k in unheld)
    moved = [k for k in before if expert_of(k) and not torch.equal(algo.flat[k], before[k])]
    assert any(expert_of(k)[0] >= 1000 for k in moved)  # decoder experts train too


@pytest.mark.slow
def test_switch_seq2seq_generate_reduces_response_loss(tmp_path):
    raw = _seq2seq_raw(tmp_path)
    s = run(build_config(raw), quiet=True)
    _check(s, raw["out"])
    assert s["experts_total"] == 16


def test_switch_router_z_loss_over_held_experts(folder, tmp_path):
    """Switch's own training adds the router z-loss (config.router_z_loss_coef); FedMoE's local
    loss does too, over the held experts' logits of real tokens; it moves only held router rows.
    Families whose config has no router_z_loss_coef (mixtral) get no z term."""
    from fedfm.algorithms.moe_backend import HFMoE
    from tests.moe_tiny import moe_folder

    bb = load_hf_backbone(folder, None, 0.0, torch.float32)
    bb.eval()
    M.attach(bb, bb)
    bb.requires_grad_(False)
    routers = [M.router_weight(rt) for _, rt in M.moe_layers(bb)]
    for w in routers:
        w.requires_grad_(True)
    M.set_held(bb, HELD)
    ids, mask = _batch()
    out = bb(ids, mask)
    z = M.z_loss(bb)
    ref = 0.0  # HF's router_z_loss_func on the held logits of the real tokens
    for _, rt in M.moe_layers(bb):
        logits, _, real = rt.fedfm_state.last
        ref = ref + (torch.logsumexp(logits[real], -1) ** 2).mean()
    assert z.item() > 0 and z.item() == pytest.approx(ref.item(), rel=1e-6)
    cz = M.z_coef(bb)
    assert cz == bb.config.router_z_loss_coef > 0
    extra = HFMoE().extra_loss(bb, 0.0)  # balance off: the z term alone is still added
    assert extra is not None and extra().item() == pytest.approx(cz * z.item(), rel=1e-6)
    grads = torch.autograd.grad(z, routers, retain_graph=True)
    for g, h in zip(grads, HELD):  # held rows move, unheld rows get exactly zero
        assert all(g[e].abs().sum() > 0 for e in h)
        assert all(torch.all(g[e] == 0) for e in range(4) if e not in h)
    task = out.pow(2).mean()
    g_task = torch.autograd.grad(task, routers, retain_graph=True)
    g_both = torch.autograd.grad(task + extra(), routers)
    assert any(not torch.allclose(a, b) for a, b in zip(g_task, g_both))
    mix = load_hf_backbone(moe_folder(tmp_path, "mixtral"), None, 0.0, torch.float32)
    M.attach(mix, mix)
    assert M.z_coef(mix) == 0.0 and HFMoE().extra_loss(mix, 0.0) is None
