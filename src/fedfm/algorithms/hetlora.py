"""HetLoRA (Cho, Liu, Joshi et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device
Foundation Models", EMNLP 2024): clients train LoRAs of different ranks, the server keeps one
rank-R LoRA, truncates it to send and zero-pads to merge.

Server keeps per LoRA layer A_g (R, in), B_g (out, R).
Down (client k, rank r_k):   A_k ← A_g[:r_k, :],  B_k ← B_g[:, :r_k]          (truncation)
Client k trains A_k, B_k on  CE + λ · Σ_layers ||A_k[ρ:, :]||_F · ||B_k[:, ρ:]||_F,
                             ρ = ⌊γ · r_k⌋                    (rank self-pruning regulariser)
  then, if that tail norm is smaller than at the client's previous round, it prunes:
  r_k ← max(1, ρ): the tail is zeroed in this round's upload and the server sends rank r_k
  from the next round on (the client's own rank never grows back above it).
Up:  A_k, B_k (and the head).
Server (zero-padded, sparsity-weighted aggregation), per layer:
    p_k = ||B_k A_k||_F / Σ_j ||B_j A_j||_F       (weighted by the update's norm, not by n_k)
    A_g[i, :] ← Σ_k p_k pad_R(A_k)[i, :],  B_g[:, i] ← Σ_k p_k pad_R(B_k)[:, i]
  pad_R fills ranks i >= r_k with zeros (so high ranks are shrunk by the small clients, as in
  the paper). Decision where the paper is silent: rank indices that NO participant of the round
  held keep their previous value (otherwise a round of small clients would zero both factors of
  the high ranks for ever). If every norm is 0, p_k = n_k / Σ n_j.
Global model: W0 + s · B_g A_g (s = α / R).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedfm.algorithms import registry
from fedfm.algorithms.base import ClientMemory
from fedfm.algorithms.env import Env
from fedfm.algorithms.lowrank import HETRANK, HetRankLoRA, Tensors
from fedfm.core.errors import ConfigError, PayloadError
from fedfm.models.lora import lora_modules
from fedfm.transport.messages import ClientUpdate


@dataclass(frozen=True)
class HetLoRAOptions:
    """[hetlora]: prune_gamma = γ (the kept share of the rank when pruning; 1 = never prune);
    prune_lambda = λ (weight of the tail-norm regulariser)."""

    prune_gamma: float = 0.9
    prune_lambda: float = 0.01

    def check(self) -> None:
        if not 0 < self.prune_gamma <= 1:
            raise ConfigError(f"hetlora.prune_gamma must be in (0, 1], not {self.prune_gamma}.")
        if self.prune_lambda < 0:
            raise ConfigError(f"hetlora.prune_lambda must be >= 0, not {self.prune_lambda}.")


def zero_padded_mean(factors: list[torch.Tensor], weights: list[float], previous: torch.Tensor,
                     rank_dim: int) -> torch.Tensor:
    """Σ_k p_k pad_R(F_k) along `rank_dim` (0 for A, 1 for B); ranks nobody held keep
    `previous`."""
    out = torch.zeros_like(previous, dtype=torch.float64)
    held = max(f.shape[rank_dim] for f in factors)
    for f, w in zip(factors, weights):
        r = f.shape[rank_dim]
        if rank_dim == 0:
            out[:r] += w * f.double()
        else:
            out[:, :r] += w * f.double()
    out = out.to(previous.dtype)
    if rank_dim == 0:
        out[held:] = previous[held:]
    else:
        out[:, held:] = previous[:, held:]
    return out


def norm_weights(pairs: list[tuple[torch.Tensor, torch.Tensor]], examples: list[int]) -> list[float]:
    """p_k = ||B_k A_k||_F / Σ_j ||B_j A_j||_F (n_k-proportional when all are 0)."""
    norms = [float((b.double() @ a.double()).norm()) for a, b in pairs]
    total = sum(norms)
    if total <= 0:
        return [n / sum(examples) for n in examples]
    return [n / total for n in norms]


def tail_norm(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    """||A[ρ:, :]||_F · ||B[:, ρ:]||_F with ρ = ⌊γ r⌋."""
    rho = int(gamma * a.shape[0])
    return a[rho:].norm() * b[:, rho:].norm()


@dataclass(frozen=True)
class PruneReport:
    """A client's prune decision, appended to its training metrics."""

    rank_next: int
    pruned: bool


def prune_report(update: ClientUpdate) -> PruneReport | None:
    try:
        return update.read(PruneReport)
    except PayloadError:  # validated upstream; a report without a decision changes nothing
        return None


class HetLoRA(HetRankLoRA):
    def __init__(self, opts: HetLoRAOptions, env: Env):
        super().__init__(env, "hetlora")
        self.opts = opts
        self.ranks: dict[int, int] = {}  # client -> pruned rank (server's record)

    def rank_of(self, client: int) -> int:
        return min(super().rank_of(client), self.ranks.get(client, self.max_rank))

    def initial_state(self) -> Tensors:
        out = {}
        for name in self.layers():
            a = self.init_a[name]
            out[f"{name}.lora_A"] = a.clone()
            out[f"{name}.lora_B"] = torch.zeros(self.shape[name][0], a.shape[0])
        return out

    def downlink(self, client: int, rank: int, rnd: int) -> Tensors:
        g = self.global_
        return {k: (g[k][:rank] if k.endswith("lora_A") else g[k][:, :rank]).clone()
                for name in self.layers() for k in (f"{name}.lora_A", f"{name}.lora_B")}

    def combine(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        examples = [u.num_examples for u in updates]
        for name in self.layers():
            ka, kb = f"{name}.lora_A", f"{name}.lora_B"
            a_s, b_s = [u.tensors[ka] for u in updates], [u.tensors[kb] for u in updates]
            w = norm_weights(list(zip(a_s, b_s)), examples)
            self.global_[ka] = zero_padded_mean(a_s, w, self.global_[ka], 0)
            self.global_[kb] = zero_padded_mean(b_s, w, self.global_[kb], 1)
        reports = [(u.client_id, prune_report(u)) for u in updates]
        for cid, rep in reports:
            if rep is not None and 1 <= rep.rank_next <= self.max_rank:
                self.ranks[cid] = min(rep.rank_next, self.rank_of(cid))
        return {"pruned_clients": sum(1 for _, rep in reports if rep is not None and rep.pruned)}

    def global_delta(self, name: str) -> torch.Tensor:
        return self.scale * (self.global_[f"{name}.lora_B"] @ self.global_[f"{name}.lora_A"])

    # ---- client: the self-pruning regulariser and the prune decision ---------------------
    def extra_loss(self, model, r: int):
        lam, gamma = self.opts.prune_lambda, self.opts.prune_gamma
        if lam == 0 or gamma >= 1:
            return None
        mods = list(lora_modules(model).values())
        return lambda: lam * sum(tail_norm(m.lora_A, m.lora_B, gamma) for m in mods)

    def after_training(self, out: Tensors, r: int, memory: ClientMemory) -> PruneReport:
        gamma = self.opts.prune_gamma
        rho = max(1, int(gamma * r))
        if gamma >= 1 or rho >= r:
            return PruneReport(r, False)
        names = [k[: -len(".lora_A")] for k in out if k.endswith(".lora_A")]
        tail = sum(float(tail_norm(out[f"{n}.lora_A"], out[f"{n}.lora_B"], gamma)) for n in names)
        prev = memory.state.get("hetlora_tail")
        memory.state["hetlora_tail"] = tail
        prune = prev is not None and tail < prev
        if prune:
            for n in names:
                out[f"{n}.lora_A"][rho:] = 0
                out[f"{n}.lora_B"][:, rho:] = 0
        return PruneReport(rho if prune else r, prune)

    def extra_state(self) -> dict[str, Any]:
        return {"ranks": {str(k): v for k, v in self.ranks.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ranks = {int(k): int(v) for k, v in (state.get("ranks") or {}).items()}


registry.register(
    "hetlora", lambda opts, env: HetLoRA(opts, env), HetLoRAOptions,
    "HetLoRA: per-client LoRA rank from the budget, truncation down, zero-padded "
    "norm-weighted merge, rank self-pruning",
    capabilities=HETRANK,
)
