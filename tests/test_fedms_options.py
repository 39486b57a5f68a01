"""FedMS design options of issue #19: the gate as a network with an inserted adapter, and which
gate parts are averaged in stage 2."""

from __future__ import annotations

import pytest
import torch

from fedfm.algorithms.fedms import FedMS
from fedfm.models.gate_net import GateNetwork
from fedfm.run import run


def test_gate_network_trains_and_sends_only_its_adapter():
    g = GateNetwork(hidden=16, rank=4, tau=1.0, seed=3)
    assert sorted(g.state_dict()) == ["down.bias", "down.weight", "up.bias", "up.weight"]
    out = g(torch.randn(5, 16))
    assert torch.allclose(out.weights.sum(-1), torch.ones(5))
    h = torch.randn(5, 16)
    before = g(h).weights.clone()
    with torch.no_grad():
        g.up.weight.normal_()
    assert not torch.allclose(g(h).weights, before)  # the adapter moves the gate
    twin = GateNetwork(hidden=16, rank=4, tau=1.0, seed=3)
    assert torch.equal(twin.w1, g.w1) and torch.equal(twin.w2, g.w2)  # frozen part: from the seed


@pytest.mark.parametrize("opts,private_head", [
    ({"fedms.stage2_average": "adapter"}, True),
    ({"fedms.gate_type": "network"}, False),
    ({}, False),
])
def test_stage2_uploads_follow_the_averaging_option(tiny_cfg, monkeypatch, opts, private_head):
    seen = []
    original = FedMS.client_update

    def spy(self, task, model, data, memory, c):
        update = original(self, task, model, data, memory, c)
        seen.append((task.config["stage"], set(update.tensors), set(memory.tensors)))
        return update

    monkeypatch.setattr(FedMS, "client_update", spy)
    s = run(tiny_cfg(algorithm="fedms", rounds=3, **{"fedms.stage1_rounds": 1}, **opts),
            quiet=True)
    stage2 = [(up, mem) for stage, up, mem in seen if stage == 2]
    assert stage2 and all(k.startswith("gate.") for up, _ in stage2 for k in up)
    heads = {"gate.head.weight", "gate.head.bias"}
    for up, mem in stage2:
        assert not (up & heads) if private_head or opts else up >= heads
        assert (mem >= heads) == private_head
    if opts.get("fedms.gate_type") == "network":
        assert all(k.startswith(("gate.down.", "gate.up.")) for up, _ in stage2 for k in up)
    assert 0 <= s["acc_personal_mean"] <= 1
