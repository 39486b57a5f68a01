"""FedMoE on real Hugging Face MoE classes (tiny random mixtral / qwen2_moe / qwen3_moe / olmoe):
router hook counts, physical cut == masked routing, per-expert LoRA, modular aggregation leaving
unheld experts bit-identical, and FedMoE / randomMoE runs that learn."""

import json

import pytest
import torch

from fedfm.algorithms.submoe import expert_of, submodel_memory
from fedfm.config import build_config
from fedfm.models.hf import moe as M
from fedfm.models.hf.loading import load_hf_backbone
from fedfm.run import run
from tests.conftest import tiny_raw
from tests.moe_tiny import FAMILIES, moe_folder

HELD = [[1, 3], [0, 2, 3]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_moe")
    return {f: moe_folder(root, f) for f in FAMILIES}


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 7:] = 0
    return ids, mask


def _backbone(folder, lora=True):
    bb = load_hf_backbone(folder, None, 0.0, torch.float32)
    ref = bb(*_batch())
    M.attach(bb, bb)
    bb.requires_grad_(False)  # as the algorithm does: frozen backbone, trainable LoRA
    if lora:
        M.add_expert_lora(bb, 4, 8.0, seed=0)
    return bb, ref


@pytest.mark.parametrize("fam", FAMILIES)
def test_counts_cut_equals_masked_and_lora_per_expert(folders, fam):
    bb, ref = _backbone(folders[fam])
    ids, mask = _batch()
    out = bb(ids, mask)
    assert torch.equal(out, ref)  # hooks + fedfm experts forward + zero-B LoRA: bit-identical
    k = M.moe_layers(bb)[0][1].top_k
    assert M.loads(bb).sum(1).tolist() == [int(mask.sum()) * k] * 2  # real tokens only
    M.set_held(bb, HELD)
    masked = bb(ids, mask)
    loads = M.loads(bb)
    assert all(loads[i, e] == 0 for i, h in enumerate(HELD) for e in range(4) if e not in h)
    M.set_held(bb, None)
    sub = M.cut(bb, HELD)
    assert torch.allclose(sub(ids, mask), masked, atol=1e-5)
    assert torch.equal(M.loads(sub), loads)
    for (ex, rt), h in zip(M.moe_layers(sub), HELD):  # only held experts are allocated
        assert ex.gate_up_proj.shape[0] == ex.down_proj.shape[0] == rt.weight.shape[0] == len(h)
        for w in (ex.gate_up_proj, ex.down_proj, rt.weight):  # own k-row storages, not views
            assert w.untyped_storage().nbytes() == w.numel() * w.element_size()
        assert sorted(int(e) for e in ex.fedfm_lora) == h
    assert submodel_memory(sub) < submodel_memory(bb)
    n_full, n_sub = (sum(p.numel() for p in m.parameters()) for m in (bb, sub))
    per = [ex.gate_up_proj[0].numel() + ex.down_proj[0].numel() + rt.weight[0].numel()
           + sum(p.numel() for p in ex.fedfm_lora["0"].parameters())
           for ex, rt in M.moe_layers(bb)]
    assert n_full - n_sub == sum(c * (4 - len(h)) for c, h in zip(per, HELD))  # exactly unheld
    full, cutp = dict(bb.named_parameters()), dict(sub.named_parameters())
    frozen = [k for k, p in full.items()
              if not p.requires_grad and "experts" not in k and ".mlp.gate." not in k]
    assert frozen and all(cutp[k].data_ptr() == full[k].data_ptr() for k in frozen)  # shared
    # LoRA gradients reach exactly the held experts that got tokens
    with torch.no_grad():
        for ex, _ in M.moe_layers(sub):
            for ad in ex.fedfm_lora.values():
                ad.gu_B.normal_()
    sub(ids, mask).pow(2).sum().backward()
    for (ex, _), h, row in zip(M.moe_layers(sub), HELD, loads):
        for e in h:
            got = ex.fedfm_lora[str(e)].gu_A.grad
            assert (got is not None and got.abs().sum() > 0) == bool(row[e] > 0)
    assert not torch.allclose(sub(ids, mask), masked)  # the LoRA changes the function


def _raw(folder, algo, tmp_path, rounds=3, **over):
    over.setdefault("resources", {"unit": "memory", "per_client": [1.0, 0.5, 1.0, 0.5]})
    raw = tiny_raw(algorithm=algo, rounds=rounds, out=str(tmp_path / algo),
                   **{"model.name": "hf", "model.path": str(folder),
                      "data.synthetic_size": 120, **over})
    raw.setdefault(algo, {}).update({"top_k": 2})
    return raw


@pytest.mark.parametrize("fam", ["mixtral", "deepseek_v3"])
def test_unheld_experts_bit_identical_after_aggregation(folders, tmp_path, fam):
    """Per-expert aggregation; DeepSeek: dense block 0 has no experts, shared experts' LoRA
    reaches every client and is averaged over all of them like the attention LoRA."""
    from fedfm.algorithms.base import ClientContext, ClientMemory
    from fedfm.sim.world import build_world

    raw = _raw(folders[fam], "randommoe", tmp_path,
               resources={"unit": "memory", "per_client": [0.5] * 4})
    world = build_world(build_config(raw))
    algo = world.algorithm
    algo.init_server(world.model)
    layers = M.moe_layer_ids(world.model)
    assert layers == ([1, 2] if fam == "deepseek_v3" else [0, 1])
    tasks = algo.configure_train(0, [0, 1])
    held = [dict(zip(layers, t.config["held"])) for t in tasks]
    for t, h in zip(tasks, held):
        assert {expert_of(k) for k in t.tensors if expert_of(k)} == {
            (i, e) for i, hs in h.items() for e in hs}
    shared = [k for k in algo.flat if "shared_experts" in k]
    assert bool(shared) == (fam == "deepseek_v3")
    assert all(set(shared) <= set(t.tensors) for t in tasks)  # every client holds them
    before = {k: v.clone() for k, v in algo.flat.items()}
    ups = [algo.client_update(t, world.model, world.data.clients[t.client_id], ClientMemory(),
                              ClientContext(5, 0, t.client_id)) for t in tasks]
    algo.aggregate_train(0, ups)
    unheld = [k for k in before if expert_of(k) and not any(
        expert_of(k)[1] in h[expert_of(k)[0]] for h in held)]
    assert unheld and all(torch.equal(algo.flat[k], before[k]) for k in unheld)
    moved = [k for k in before if expert_of(k) and not torch.equal(algo.flat[k], before[k])]
    assert moved and any(".gate.weight." in k for k in moved)
    for k in shared:  # dense averaging: the mean of the two clients' uploads
        mean = (ups[0].tensors[k] * ups[0].num_examples + ups[1].tensors[k] * ups[1].num_examples
                ) / (ups[0].num_examples + ups[1].num_examples)
        assert torch.allclose(algo.flat[k], mean, atol=1e-6)
    # the server model itself is never cut: clients train copies
    assert all(ex.gate_up_proj.shape[0] == 4 for ex, _ in M.moe_layers(world.model))


def _learns(s, out):
    rows = [json.loads(x) for x in open(f"{out}/metrics.jsonl")]
    accs = [r["acc_personal_mean"] for r in rows if r.get("acc_personal_mean") is not None]
    assert accs[-1] > 0.5, accs  # 4 classes: chance 0.25
    assert s["experts_total"] == 8 and 0 < s["experts_held_mean"] <= 8
    for c in s["clients"]:
        assert len(c["experts_held"]) == 2 and c["experts"] == sum(map(len, c["experts_held"]))
    full = max(c["memory_mb"] for c in s["clients"])
    assert any(c["memory_mb"] < full for c in s["clients"] if c["id"] % 2)


@pytest.mark.parametrize("fam,algo", [("mixtral", "fedmoe"), ("qwen2_moe", "randommoe"),
                                      ("deepseek_v3", "fedmoe")])
def test_fedmoe_randommoe_learn_on_hf_moe(folders, tmp_path, fam, algo):
    raw = _raw(folders[fam], algo, tmp_path)
    s = run(build_config(raw), quiet=True)
    _learns(s, raw["out"])


# with the non-slow cases above: fedmoe and randommoe each run end to end on every family.
# Local budget: 3 local epochs (~6 steps per client per round) instead of 1 (~2 steps): with 1,
# 3 rounds leave every family's true personal accuracy around 0.4-0.6 (measured on 4x larger
# client test sets: mixtral 0.47 / olmoe 0.47 / qwen2_moe 0.42 randomMoE, seed 0), so the 0.5 bar
# on 2-8 test examples per client was a coin flip (mixtral-randommoe 0.40, 0.48, 0.46 at seeds
# 0-2; qwen2_moe 0.30 and deepseek_v3 0.46 at seed 2). Holding every expert gave mixtral the same
# 0.40, so neither the expert restriction nor the routing renormalisation was the cause. With 3
# epochs every case here reaches 0.61-0.94 at seeds 0 and 1 (mixtral-randommoe 0.61-0.76 at 0-4).
@pytest.mark.slow
@pytest.mark.parametrize("fam,algo", [
    *((f, a) for f in ("qwen3_moe", "olmoe", "deepseek_v2") for a in ("fedmoe", "randommoe")),
    ("mixtral", "randommoe"), ("qwen2_moe", "fedmoe"), ("deepseek_v3", "randommoe")])
def test_every_family_runs(folders, tmp_path, fam, algo):
    raw = _raw(folders[fam], algo, tmp_path, **{"train.local_epochs": 3})
    s = run(build_config(raw), quiet=True)
    _learns(s, raw["out"])


def test_hf_moe_rejects_moefication_options(folders, tmp_path):
    from fedfm.sim.world import build_world

    raw = _raw(folders["olmoe"], "fedmoe", tmp_path, **{"fedmoe.build": "upcycle"})
    with pytest.raises(Exception, match="brings its own experts"):
        build_world(build_config(raw))


def test_dense_hf_folder_is_refused_with_a_pointer_to_upcycle(tmp_path):
    from tests.hf_tiny import tiny_folder

    folder = tiny_folder(tmp_path, "llama")
    raw = _raw(folder, "randommoe", tmp_path, rounds=1)
    with pytest.raises(Exception, match="fedfm upcycle"):
        run(build_config(raw), quiet=True)


@pytest.mark.parametrize("kind", ["qwen2_moe", "switch_transformers"])
def test_dense_blocks_between_moe_blocks(kind):
    """Qwen2-MoE mlp_only_layers / Switch sparse_step 2: dense blocks carry no experts, the MoE
    blocks keep their block index, cut == masked, shared experts get LoRA (Qwen2)."""
    import transformers as T

    from fedfm.models.hf.loading import wrap
    from tests.moe_tiny import moe_config, switch_config

    torch.manual_seed(0)
    if kind == "qwen2_moe":
        cfg = {**moe_config("qwen2_moe").to_dict(), "num_hidden_layers": 3, "layer_types": None,
               "mlp_only_layers": [0], "vocab_size": 200}
        model, ids_expected = T.AutoModel.from_config(T.Qwen2MoeConfig(**cfg)), [1, 2]
    else:
        model, ids_expected = T.SwitchTransformersEncoderModel(switch_config(200, 2)), [1]
    bb = wrap(model.eval())
    ids, mask = torch.randint(5, 200, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    ref = bb(ids, mask)
    M.attach(bb, bb)
    bb.requires_grad_(False)
    M.add_expert_lora(bb, 4, 8.0, 0)
    shared = M.add_shared_lora(bb, 4, 8.0, 1)
    assert M.moe_layer_ids(bb) == ids_expected and torch.equal(bb(ids, mask), ref)
    assert len(shared) == (6 if kind == "qwen2_moe" else 0)
    held = [[0, 2], [1, 3]][: len(ids_expected)]
    M.set_held(bb, held)
    masked = bb(ids, mask)
    M.set_held(bb, None)
    assert torch.allclose(M.cut(bb, held)(ids, mask), masked, atol=1e-5)
