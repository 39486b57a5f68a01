"""Personalised baselines (issue #19): the mechanism of each, on a tiny model.

FedSA-LoRA: B (and the local head) never leave the client. FedDPA: the instance-wise weights and
the dual-adapter combination. FedAvg-FT: personal evaluation uses a fine-tuned copy, the global
model is untouched. Ditto: the personal model stays private and is pulled towards the global one.
"""

from __future__ import annotations

import pytest
import torch

from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.feddpa import instance_weights
from fedfm.cli import main
from fedfm.core.errors import ConfigError
from fedfm.models.classifier import get_tensors, set_tensors
from fedfm.models.dual_lora import dual_forward
from fedfm.sim.world import build_world


def ctx(rnd=0, cid=0):
    return ClientContext(4321 + rnd, rnd, cid)


def trained(tiny_cfg, algorithm, **over):
    """A world whose server is initialised, and client 0's first update and memory."""
    w = build_world(tiny_cfg(algorithm=algorithm, **over))
    w.algorithm.init_server(w.model)
    task = w.algorithm.configure_train(0, [0])[0]
    mem = ClientMemory()
    up = w.algorithm.client_update(task, w.model, w.data.clients[0], mem, ctx())
    return w, task, up, mem


def test_fedsa_uploads_only_a_and_keeps_b_on_the_client(tiny_cfg):
    w, task, up, mem = trained(tiny_cfg, "fedsa")
    assert up.tensors and all(k.endswith(".lora_A") for k in up.tensors)
    assert set(up.tensors) == set(w.algorithm.upload_schema(task))
    assert mem.tensors and all(k.endswith(".lora_B") or k.startswith("head.") for k in mem.tensors)
    assert any(float(v.abs().sum()) > 0 for k, v in mem.tensors.items() if k.endswith("lora_B"))
    w.algorithm.aggregate_train(0, [up])
    assert all(torch.equal(w.algorithm.global_[k], up.tensors[k]) for k in up.tensors)
    shared = build_world(tiny_cfg(algorithm="fedsa", **{"fedsa.head": "shared"})).algorithm
    assert shared.adapter.travels("head.weight") and not shared.adapter.travels("x.lora_B")


def test_fedsa_and_feddpa_refuse_full_finetuning(tiny_cfg):
    for algorithm in ("fedsa", "feddpa"):
        with pytest.raises(ConfigError, match="model.finetune = 'full' is not supported"):
            tiny_cfg(algorithm=algorithm, **{"model.finetune": "full"})


def test_feddpa_instance_weights_are_scaled_mean_cosines():
    test = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    ref = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a = instance_weights(test, ref, 0.5)
    cos = 2 ** -0.5
    assert torch.allclose(a, torch.tensor([0.5 * (1 + cos) / 2, 0.5 * cos / 2, 0.0]))


def test_feddpa_combination_interpolates_global_and_local(tiny_cfg):
    w, task, up, mem = trained(tiny_cfg, "feddpa")
    model, split = w.model, w.data.clients[0].test
    ids, mask = split.input_ids[:4], split.attention_mask[:4]
    assert set(mem.tensors) == set(up.tensors)  # the local adapter mirrors the global one
    assert any(not torch.equal(mem.tensors[k], up.tensors[k]) for k in up.tensors)
    set_tensors(model, dict(task.tensors))
    with torch.no_grad():
        z_g = model(ids, mask)
        _, z0 = dual_forward(model, mem.tensors, 0.0, ids, mask)
        _, z_half = dual_forward(model, mem.tensors, torch.full((4,), 0.5), ids, mask)
        _, z1 = dual_forward(model, mem.tensors, 1.0, ids, mask)
        set_tensors(model, mem.tensors)
        z_l = model(ids, mask)
    assert torch.allclose(z0, z_g, atol=1e-5) and torch.allclose(z1, z_l, atol=1e-5)
    assert not torch.allclose(z_half, z_g, atol=1e-4) and not torch.allclose(z_half, z_l, atol=1e-4)
    set_tensors(model, dict(task.tensors))
    from fedfm.algorithms.feddpa import DualClient, FedDPAOptions

    client = DualClient(FedDPAOptions(), w.algorithm.env)
    alphas = client.alphas(model, mem.tensors, w.data.clients[0])
    assert alphas.shape == (len(split),) and 0 <= float(alphas.min()) <= float(alphas.max()) <= 0.5


def test_fedavg_ft_evaluates_a_fine_tuned_copy_and_leaves_the_global_untouched(tiny_cfg):
    w = build_world(tiny_cfg(algorithm="fedavg-ft", **{"fedavg-ft.steps": 3}))
    algo, model = w.algorithm, w.model
    algo.init_server(model)
    before = {k: v.clone() for k, v in algo.global_.items()}
    task = algo.configure_evaluate(0, [1])[0]
    res = algo.client_evaluate(task, model, w.data.clients[1], ClientMemory(), ctx(0, 1))
    assert res.metrics["ft_steps"] == 3 and not res.tensors
    assert all(torch.equal(before[k], algo.global_[k]) for k in before)
    moved = get_tensors(model, list(before))  # the shared model held the fine-tuned copy
    assert any(not torch.equal(moved[k], before[k]) for k in before)
    plain = build_world(tiny_cfg(algorithm="fedavg-ft", **{"fedavg-ft.steps": 0})).algorithm
    assert plain.personalise(model, w.data.clients[1], ctx()) == {}


def test_ditto_keeps_the_personal_model_private_and_proximal(tiny_cfg):
    far = trained(tiny_cfg, "ditto", **{"ditto.lam": 0.0})
    near = trained(tiny_cfg, "ditto", **{"ditto.lam": 50.0})
    for _w, task, up, mem in (far, near):
        assert set(up.tensors) == set(task.tensors) == set(mem.tensors)
        assert any(not torch.equal(mem.tensors[k], up.tensors[k]) for k in up.tensors)

    def dist(run):
        _, task, _, mem = run
        return sum(float((mem.tensors[k] - task.tensors[k]).norm() ** 2) for k in task.tensors)

    assert dist(near) < 0.5 * dist(far)


@pytest.mark.parametrize("algorithm", ["fedsa", "feddpa", "fedavg-ft", "ditto"])
def test_listed(algorithm, capsys):
    assert main(["list"]) == 0
    assert algorithm in capsys.readouterr().out


def test_new_baselines_run_end_to_end(tiny_cfg):
    from fedfm.run import run

    for algorithm in ("fedsa", "feddpa", "ditto", "fedavg-ft"):
        s = run(tiny_cfg(algorithm=algorithm, out=str(tiny_cfg().out) + algorithm), quiet=True)
        assert s["acc_personal_mean"] is not None and 0 <= s["acc_personal_mean"] <= 1
        assert (s["acc_global"] is None) == (algorithm == "fedsa")
    with pytest.raises(ConfigError):
        tiny_cfg(algorithm="feddpa", **{"feddpa.max_weight": 2.0})


def test_personal_metrics_weighted_p10_and_min_test():
    from fedfm.sim.personal import eligible_clients, personal_metrics

    m = personal_metrics([(1, 1), (0, 1), (90, 100), (5, 10)])
    assert m["acc_personal_mean"] == pytest.approx((1 + 0 + 0.9 + 0.5) / 4)
    assert m["acc_personal_weighted"] == pytest.approx(96 / 112)
    assert m["acc_personal_p10"] == pytest.approx(0.15)  # numpy linear: 0 + 0.3 · (0.5 - 0)
    assert eligible_clients([3, 12, 0, 40], 10) == [1, 3]
    assert eligible_clients([3, 12, 0, 40], 0) == [0, 1, 3]
    with pytest.raises(ConfigError, match="excludes every client"):
        eligible_clients([3, 4], 10)


def test_min_client_test_is_logged_and_metrics_rows_carry_the_new_fields(tiny_cfg):
    import json
    from pathlib import Path

    from fedfm.run import run

    cfg = tiny_cfg(**{"data.min_client_test": 10})
    s = run(cfg, quiet=True)
    sizes = [c["n_test"] for c in s["clients"]]
    assert s["personal_excluded"] == sum(n < 10 for n in sizes) and s["min_client_test"] == 10
    assert 0 < s["personal_excluded"] < len(sizes)  # the tiny run has small and large clients
    assert all(("acc_personal" in c) == (c["n_test"] >= 10) for c in s["clients"])
    rows = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    assert all(k in rows[-1] for k in ("acc_personal_weighted", "acc_personal_p10"))
    kept = [c for c in s["clients"] if c["n_test"] >= 10]
    assert s["acc_personal_weighted"] == pytest.approx(
        sum(c["acc_personal"] * c["n_test"] for c in kept) / sum(c["n_test"] for c in kept))


@pytest.mark.parametrize("algorithm", ["fedsa", "feddpa", "fedavg-ft", "ditto"])
def test_new_baselines_honour_robust_aggregation_and_dp(algorithm, tiny_cfg):
    """They average through aggregation.masked_aggregate, so they declare [aggregation]/[dp]."""
    from fedfm.run import run

    s = run(tiny_cfg(algorithm=algorithm, rounds=1, **{"aggregation.method": "median"}),
            quiet=True)
    assert s["acc_personal_mean"] is not None
    tiny_cfg(algorithm=algorithm, **{"dp.enabled": True})  # accepted by validation
