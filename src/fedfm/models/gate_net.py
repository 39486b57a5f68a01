"""FedMS's gate read literally: "a gate neural network with an inserted adapter", of which only
the adapter is aggregated (issue #19's design point; `fedms.gate_type = "network"`).

A small gate network, frozen and identical on every client (initialised from the run seed, so it
is never sent), with a bottleneck adapter inserted between its two layers:

    u = gelu(W₁ h + b₁)                      W₁: H -> H   (frozen)
    u' = u + U · gelu(D · u)                 D: H -> r, U: r -> H   (the adapter: trained, averaged)
    g = softmax(W₂ u' / tau)                 W₂: H -> 2   (frozen)

Compared with `mofm.Gate` (`gate_type = "head"`: adapter on the pooled features + a trained
softmax head), the trainable and communicated part is the adapter alone. W₂'s rows start
distinct, so the initial weights are not exactly ½, ½; U = 0 makes the adapter start as the
identity. The frozen layers are non-persistent buffers: they are not in `state_dict()` and
never travel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedfm.models.mofm import GateOutput


class GateNetwork(nn.Module):
    def __init__(self, hidden: int, rank: int, tau: float, seed: int, experts: int = 2):
        super().__init__()
        self.tau = tau
        gen = torch.Generator().manual_seed(seed)
        scale = hidden ** -0.5
        self.register_buffer("w1", torch.randn(hidden, hidden, generator=gen) * scale,
                             persistent=False)
        self.register_buffer("b1", torch.zeros(hidden), persistent=False)
        self.register_buffer("w2", torch.randn(experts, hidden, generator=gen) * scale,
                             persistent=False)
        self.down = nn.Linear(hidden, rank)
        self.up = nn.Linear(rank, hidden)
        with torch.no_grad():
            self.down.weight.normal_(0.0, scale, generator=gen)
            for p in (self.down.bias, self.up.weight, self.up.bias):
                p.zero_()

    def forward(self, h: torch.Tensor) -> GateOutput:
        with torch.autocast("cpu", enabled=False):
            u = F.gelu(F.linear(h.float(), self.w1, self.b1))  # (B, H)
            u = u + self.up(F.gelu(self.down(u)))  # (B, H): the inserted adapter
            log_g = F.log_softmax(F.linear(u, self.w2) / self.tau, dim=-1)  # (B, 2)
        return GateOutput(log_g, log_g.exp())
