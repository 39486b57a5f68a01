"""Mixture of Foundation Models (MoFM): two experts on one frozen backbone, mixed by a gate.

An *expert* is the frozen backbone + its own LoRA tensors + its own classification head. The
experts differ only in those tensors, so both run on the *same* module through
`torch.func.functional_call`, from the same frozen prefix h_s (hidden states entering the
lowest applied LoRA block s, see `sal.py`):

    z_e = W_e · pool(blocks[s:L](h_s; LoRA_e)) + b_e                    e ∈ {global, local}

The gate sees a per-example representation h (the frozen backbone's pooled output by default)
through a bottleneck *gate adapter* and outputs two mixing weights:

    adapter(h) = h + U · gelu(D · h)          D: H -> r, U: r -> H (U = 0 at init: identity)
    g = softmax(W_g · adapter(h) / tau)        (B, 2), rows sum to one (W_g = 0 at init: ½, ½)
    p(y | x) = g_global · softmax(z_global) + g_local · softmax(z_local)

trained with cross-entropy on the mixture: log p(y|x) = logsumexp_e(log g_e + log_softmax(z_e)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedfm.models.classifier import pool


class Tail(nn.Module):
    """Blocks [start, L) + pooling + head of a Classifier, with the Classifier's parameter names
    (`backbone.*`, `head.*`), so an expert's tensors can be swapped in by name."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, pooling: str):
        super().__init__()
        self.backbone, self.head, self.pooling = backbone, head, pooling

    def forward(self, h: torch.Tensor, mask: torch.Tensor, start: int):
        """(pooled features, logits) on `mask`'s device (the backbone may sit on a GPU)."""
        out = self.backbone.run_from(h, mask, start)  # (B, T, H)
        feats = pool(out, mask.to(out.device), self.pooling)  # (B, H)
        logits = self.head(feats)  # (B, C)
        return feats.to(mask.device), logits.to(mask.device)


def expert_forward(tail: Tail, tensors: dict[str, torch.Tensor], h: torch.Tensor,
                   mask: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features, logits) of the expert whose LoRA + head tensors are `tensors` (moved
    to the model's device with a differentiable copy when it is not the CPU)."""
    dev = tail.head.weight.device
    if dev.type != "cpu":
        tensors = {k: v.to(dev, non_blocking=True) for k, v in tensors.items()}
    return functional_call(tail, tensors, (h, mask, start), strict=False)


class GateOutput(NamedTuple):
    log_weights: torch.Tensor  # (B, 2): log g, column 0 = global expert, 1 = local expert
    weights: torch.Tensor  # (B, 2): g, rows sum to one


class Gate(nn.Module):
    """g = softmax(W_g · adapter(h) / tau) over (global, local); adapter = bottleneck residual."""

    def __init__(self, hidden: int, rank: int, tau: float, seed: int, experts: int = 2):
        super().__init__()
        self.tau = tau
        self.down = nn.Linear(hidden, rank)
        self.up = nn.Linear(rank, hidden)
        self.head = nn.Linear(hidden, experts)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.down.weight.normal_(0.0, 1.0 / hidden**0.5, generator=gen)
            for p in (self.down.bias, self.up.weight, self.up.bias, self.head.weight,
                      self.head.bias):
                p.zero_()

    def adapter(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))  # (B, H)

    def forward(self, h: torch.Tensor) -> GateOutput:
        with torch.autocast(h.device.type, enabled=False):  # tiny: fp32 so small moves of g count
            scores = self.head(self.adapter(h.float())) / self.tau  # (B, 2)
            log_g = F.log_softmax(scores, dim=-1)
        return GateOutput(log_g, log_g.exp())


def mixture_log_probs(log_g: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
    """log Σ_e g_e · softmax(z_e)  (B, C), computed stably with logsumexp."""
    per_expert = torch.stack([F.log_softmax(z.float(), -1) for z in logits], 1)  # (B, E, C)
    return torch.logsumexp(log_g.unsqueeze(-1) + per_expert, dim=1)  # (B, C)
