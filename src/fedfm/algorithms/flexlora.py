"""FlexLoRA (Bai, Chen, Ding et al., "Federated Fine-tuning of Large Language Models under
Heterogeneous Tasks and Client Resources", NeurIPS 2024): aggregate the full-size update,
redistribute it by truncated SVD at each client's rank.

Server keeps per LoRA layer the dense global update ΔW_g (out, in), initially 0.
Server, per layer:   ΔW_g ← Σ_k (n_k / Σ_j n_j) · s · B_k A_k        (full-size, exact mean)
Down (client k, rank r_k):  ΔW_g = U S Vᵀ (SVD, once per round);
    A_k = c · V_{:r_k}ᵀ (r_k, in),   B_k = U_{:, :r_k} S_{:r_k} / (c · s) (out, r_k)
  so s · B_k A_k = the best rank-r_k approximation of ΔW_g (Eckart–Young: its error is
  sqrt(Σ_{i>r_k} σ_i²) in Frobenius norm). c = the mean row norm of the seeded initial A, so
  A keeps the usual LoRA scale and no factor is zero (rows of A with σ_i = 0 still train B).
  While ΔW_g = 0 (round 1) the clients get the standard init: A = A_init[:r_k], B = 0.
Client k trains A_k, B_k (and the head) from there and sends them; its model is
W0 + s · B_k A_k, the global model is W0 + ΔW_g.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedfm.algorithms import registry
from fedfm.algorithms.env import Env
from fedfm.algorithms.lowrank import HETRANK, HetRankLoRA, Tensors
from fedfm.transport.messages import ClientUpdate


@dataclass(frozen=True)
class FlexLoRAOptions:
    """[flexlora]: no options (the rank comes from [resources], the maximum from lora_rank)."""

    def check(self) -> None:
        pass


def svd_factors(delta: torch.Tensor, rank: int, scale: float,
                c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW (out, in) -> (A (r, in), B (out, r)) with scale · B A = best rank-r approximation."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)  # (out,k) (k,) (k,in)
    r = min(rank, s.shape[0])
    a = c * vh[:r]  # (r, in)
    b = u[:, :r] * s[:r] / (c * scale)  # (out, r)
    if r < rank:  # more rank than the matrix has: pad (A rows orthogonal-free zeros)
        a = torch.cat([a, torch.zeros(rank - r, a.shape[1], dtype=a.dtype)])
        b = torch.cat([b, torch.zeros(b.shape[0], rank - r, dtype=b.dtype)], 1)
    return a.float(), b.float()


def weighted_product_mean(pairs: list[tuple[torch.Tensor, torch.Tensor]], weights: list[float],
                          scale: float) -> torch.Tensor:
    """Σ_k w_k · s · B_k A_k / Σ_k w_k (float64 accumulation)."""
    total = float(sum(weights))
    out = None
    for (a, b), w in zip(pairs, weights):
        term = (w / total) * scale * (b.double() @ a.double())
        out = term if out is None else out + term
    return out.float()


class FlexLoRA(HetRankLoRA):
    def __init__(self, env: Env):
        super().__init__(env, "flexlora")
        self._svd: dict[str, tuple] = {}  # layer -> (A_full, B_full) at the largest rank, per round

    def initial_state(self) -> Tensors:
        return {f"{name}.delta": torch.zeros(self.shape[name]) for name in self.layers()}

    def _row_norm(self, name: str) -> float:
        a = self.init_a[name]
        return float(a.norm(dim=1).mean()) or 1.0

    def downlink(self, client: int, rank: int, rnd: int) -> Tensors:
        out = {}
        for name in self.layers():
            delta = self.global_[f"{name}.delta"]
            if not bool(delta.any()):
                a = self.init_a[name][:rank].clone()
                b = torch.zeros(delta.shape[0], rank)
            else:
                key = (name, rnd)
                if key not in self._svd:  # one SVD per layer and round, truncated per client
                    self._svd = {k: v for k, v in self._svd.items() if k[1] == rnd}
                    self._svd[key] = svd_factors(delta, self.max_rank, self.scale,
                                                 self._row_norm(name))
                a_full, b_full = self._svd[key]
                a, b = a_full[:rank].clone(), b_full[:, :rank].clone()
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = a, b
        return out

    def combine(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        weights = [u.num_examples for u in updates]
        for name in self.layers():
            pairs = [(u.tensors[f"{name}.lora_A"], u.tensors[f"{name}.lora_B"]) for u in updates]
            self.global_[f"{name}.delta"] = weighted_product_mean(pairs, weights, self.scale)
        self._svd = {}
        return {}

    def global_delta(self, name: str) -> torch.Tensor:
        return self.global_[f"{name}.delta"]


registry.register(
    "flexlora", lambda opts, env: FlexLoRA(env), FlexLoRAOptions,
    "FlexLoRA: per-client LoRA rank from the budget, full-size ΔW mean, truncated-SVD "
    "redistribution",
    capabilities=HETRANK,
)
