"""FedMoE's expert recommendation (stage 2): grow or shrink a stalled client's expert set
towards what similar clients hold, and revert-and-freeze when the change does not help.

For client c with activation profile p_c (blocks x experts, flattened for similarity):
  sim(c, j) = cos(p_c, p_j);  R = the top-K most similar other clients (sim > 0)
  per block i:  n_i = round(mean_{j∈R} |S_j,i|) - |S_c,i|
                p̂_i = Σ_{j∈R} sim(c,j) p_j,i / Σ_{j∈R} sim(c,j)
  n_i > 0: add the n_i experts outside S_c,i with the highest p̂_i;
  n_i < 0: drop the |n_i| experts inside S_c,i with the lowest p̂_i (keeping at least one).
Trial: the next validation score of c must beat the score before the change, else the old set
comes back and c's structure is frozen for the rest of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Held = list[list[int]]


def reference_set(cid: int, profiles: dict[int, torch.Tensor], k: int) -> list[tuple[int, float]]:
    """The top-k other clients by cosine similarity of their profiles (only sim > 0)."""
    own = profiles[cid].flatten().double()
    sims = [(j, float(F.cosine_similarity(own, p.flatten().double(), dim=0)))
            for j, p in profiles.items() if j != cid]
    sims = [s for s in sorted(sims, key=lambda s: (-s[1], s[0])) if s[1] > 0]
    return sims[:k]


def recommend(own: Held, refs: list[tuple[torch.Tensor, Held, float]]) -> Held:
    """New expert sets per block from the reference set [(p_j, S_j, sim_j)] (see module doc)."""
    if not refs:
        return [list(h) for h in own]
    wsum = sum(s for _, _, s in refs)
    new = []
    for i, mine in enumerate(own):
        n = round(sum(len(h[i]) for _, h, _ in refs) / len(refs)) - len(mine)
        p_hat = sum(p[i].double() * s for p, _, s in refs) / wsum  # (E,)
        inside = set(mine)
        if n > 0:
            outside = [e for e in torch.argsort(-p_hat, stable=True).tolist() if e not in inside]
            new.append(sorted(inside | set(outside[:n])))
        elif n < 0:
            ranked = sorted(mine, key=lambda e: (float(p_hat[e]), e))
            drop = set(ranked[: min(-n, len(mine) - 1)])
            new.append(sorted(inside - drop))
        else:
            new.append(sorted(mine))
    return new


def propose(cid: int, profiles: dict[int, torch.Tensor], held: dict[int, Held], k: int,
            cost, limit: float) -> Held:
    """`recommend` for client `cid` from its top-k reference set, then the added experts with
    the lowest own p dropped until `cost(new) <= limit` (its memory budget)."""
    old = held[cid]
    refs = [(profiles[j], held[j], s) for j, s in reference_set(cid, profiles, k)]
    new = recommend(old, refs)
    while new != old and cost(new) > limit:
        added = [(float(profiles[cid][i, e]), i, e)
                 for i, h in enumerate(new) for e in h if e not in old[i]]
        if not added:
            return old
        _, i, e = min(added)
        new = [[x for x in h if not (j == i and x == e)] for j, h in enumerate(new)]
    return new


@dataclass
class RecState:
    """A client's recommendation state (JSON-able): best score, stalls, pending trial."""

    best: float | None = None
    stall: int = 0
    frozen: bool = False
    trial_prev: Held | None = None
    trial_score: float | None = None
    changes: list[str] = field(default_factory=list)


def observe(state: RecState, score: float, patience: int, min_delta: float = 0.0) -> str:
    """Update `state` with a new validation score; returns the action for the server:
    "accept" / "revert" (a trial ended), "recommend" (stalled for `patience`), or "none"."""
    if state.trial_prev is not None:
        if score > state.trial_score + min_delta:
            state.best, state.stall = max(score, state.best or score), 0
            state.trial_prev = state.trial_score = None
            return "accept"
        state.frozen = True
        return "revert"
    if state.frozen:
        return "none"
    if state.best is None or score > state.best + min_delta:
        state.best, state.stall = score, 0
        return "none"
    state.stall += 1
    return "recommend" if state.stall >= patience else "none"


def check_upload_metrics(update, shape: tuple[int, int], score: str) -> str | None:
    """Why a FedMoE upload's metrics cannot be used (None if they can): `task` a string; with
    tensors, `p` a finite non-negative array of the expert-share shape and the validation
    score (`val_loss` or `val_acc`) a finite number."""
    m = update.metrics
    if not isinstance(m.get("task", "main"), str):
        return "metric 'task' must be a string"
    if not update.tensors:
        return None
    try:
        p = torch.tensor(m.get("p"), dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        p = None
    if p is None or tuple(p.shape) != tuple(shape) or not bool(torch.isfinite(p).all()) \
            or bool((p < 0).any()):
        return f"metric 'p' must be a finite, non-negative array of shape {tuple(shape)}"
    key = "val_loss" if score == "loss" else "val_acc"
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return f"metric '{key}' must be a finite number"
    return None
