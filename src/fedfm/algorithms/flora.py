"""FLoRA (Wang, Xu, Liu et al., "FLoRA: Federated Fine-Tuning Large Language Models with
Heterogeneous Low-Rank Adaptations", NeurIPS 2024): stack the clients' LoRA factors so the
aggregate is exact, and fold it into the base model.

Client k, every round: a FRESH LoRA of rank r_k (A_k seeded random, B_k = 0) on the current
global base W = W0 + F, trained with the head; sends A_k (r_k, in), B_k (out, r_k).
Server, per layer, with p_k = n_k / Σ_j n_j:
    A_stack = [p_1 A_1; p_2 A_2; ...; p_K A_K]     (Σ r_k, in)    rows stacked
    B_stack = [B_1, B_2, ..., B_K]                 (out, Σ r_k)   columns stacked
    s · B_stack A_stack = Σ_k p_k · s · B_k A_k    exactly (block product; no cross terms
                                                   B_j A_k as in averaging A and B apart)
    F ← F + s · B_stack A_stack                    the paper's merge into the base weights
Down: F, the accumulated fold. The paper sends the round's stacked factors and each client adds
them to its local copy of the base. fedfm's clients are stateless between rounds (a client may
skip rounds), so the server sends the whole fold as stacked factors `p.fold_A` (m, in),
`p.fold_B` (out, m) (all rounds' stacks, scale s inside fold_B) while m · (in + out) < in · out,
and as one dense `p.fold` (out, in) once that is smaller: the bytes counted are what is sent.
Global model: W0 + F (the LoRA of the round is discarded after the merge, as in the paper).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch

from fedfm.algorithms import registry
from fedfm.algorithms.base import ClientContext
from fedfm.algorithms.env import Env
from fedfm.algorithms.lowrank import HETRANK, HetRankLoRA, Tensors
from fedfm.core.errors import PayloadError
from fedfm.transport.messages import ClientTask, ClientUpdate


@dataclass(frozen=True)
class FLoRAOptions:
    """[flora]: no options (the rank comes from [resources], the maximum from lora_rank)."""

    def check(self) -> None:
        pass


def stack(pairs: list[tuple[torch.Tensor, torch.Tensor]], weights: list[float]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """[(A_k (r_k, in), B_k (out, r_k))], w -> A_stack (Σr, in) = [p_k A_k], B_stack (out, Σr)."""
    total = float(sum(weights))
    a = torch.cat([(w / total) * a for (a, _), w in zip(pairs, weights)], 0)
    b = torch.cat([b for _, b in pairs], 1)
    return a, b


def fold_delta(tensors, name: str) -> torch.Tensor | None:
    """The dense fold F (out, in) of a layer from its factor or dense form (None: no fold)."""
    dense = tensors.get(f"{name}.fold")
    if dense is not None:
        return dense
    a, b = tensors.get(f"{name}.fold_A"), tensors.get(f"{name}.fold_B")
    if a is None and b is None:
        return None
    if a is None or b is None or b.shape[1] != a.shape[0]:
        raise PayloadError(f"fold of '{name}' is incomplete")
    return b @ a


class FLoRA(HetRankLoRA):
    def __init__(self, env: Env):
        super().__init__(env, "flora")

    def initial_state(self) -> Tensors:
        return {}

    def downlink(self, client: int, rank: int, rnd: int) -> Tensors:
        return {k: v for k, v in self.global_.items() if ".fold" in k}

    def combine(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        weights = [u.num_examples for u in updates]
        dense = 0
        for name in self.layers():
            pairs = [(u.tensors[f"{name}.lora_A"], u.tensors[f"{name}.lora_B"]) for u in updates]
            a, b = stack(pairs, weights)
            self._fold(name, a, self.scale * b)
            dense += f"{name}.fold" in self.global_
        return {"stacked_rank": sum(int(u.tensors[f"{self.layers()[0]}.lora_A"].shape[0])
                                    for u in updates), "dense_folds": dense}

    def _fold(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        g, (out, inp) = self.global_, self.shape[name]
        if f"{name}.fold" in g:
            g[f"{name}.fold"] = g[f"{name}.fold"] + b @ a
            return
        if f"{name}.fold_A" in g:
            a, b = torch.cat([g[f"{name}.fold_A"], a]), torch.cat([g[f"{name}.fold_B"], b], 1)
        if a.shape[0] * (out + inp) < out * inp:
            g[f"{name}.fold_A"], g[f"{name}.fold_B"] = a.contiguous(), b.contiguous()
        else:
            g.pop(f"{name}.fold_A", None), g.pop(f"{name}.fold_B", None)
            g[f"{name}.fold"] = b @ a

    def global_delta(self, name: str) -> torch.Tensor:
        f = fold_delta(self.global_, name)
        return torch.zeros(self.shape[name]) if f is None else f

    # ---- client: base = W0 + F, a fresh LoRA every round --------------------------------
    def client_base(self, name: str, task: ClientTask) -> torch.Tensor:
        f = fold_delta(task.tensors, name)
        return self.w0[name] if f is None else self.with_delta(name, f)

    def client_factors(self, name: str, r: int, task: ClientTask, ctx: ClientContext):
        a0 = self.init_a[name]
        gen = torch.Generator().manual_seed((ctx.seed + zlib.crc32(name.encode())) % 2**63)
        bound = 1.0 / a0.shape[1] ** 0.5  # kaiming-uniform(a=sqrt(5)), as LoRALinear's init
        a = torch.empty(r, a0.shape[1]).uniform_(-bound, bound, generator=gen)
        return a, torch.zeros(self.shape[name][0], r)


registry.register(
    "flora", lambda opts, env: FLoRA(env), FLoRAOptions,
    "FLoRA: per-client LoRA rank from the budget, exact stacking aggregation folded into the "
    "base, fresh adapters every round",
    capabilities=HETRANK,
)
