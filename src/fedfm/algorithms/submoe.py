"""Sub-MoE plumbing shared by FedMoE and randomMoE: which tensors belong to which expert, what a
submodel costs in memory and the threshold search of FedMoE's stage 1. Modular aggregation (each
expert averaged over its holders, unheld experts untouched) is `aggregation.masked_aggregate`.

Server tensors are kept "flat": the router weight (E, H) of block i is split into rows
`...router.weight.{e}`, so that an expert = its LoRA tensors + its router row, and a client's
payload is simply the dense keys + the keys of the experts it holds.

Memory of a submodel (bytes) = Σ parameter bytes + 3 · Σ trainable parameter bytes
(gradient + AdamW's two moments); activations are not counted. `MemoryModel` is additive
(dense part + one cost per expert) and equals `submodel_memory(build_submoe(model, held))`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn

from fedfm.models.moe import Experts, moe_blocks

Held = list[list[int]]  # experts held per MoE block (sorted)
# legacy MiniLM MoE keys | Hugging Face MoE keys (models/hf/moe.py: per-expert LoRA, router rows)
# + Switch: (encoder|decoder).block.{i}...experts.expert_{e}.*, ...router.classifier.weight.{e}
_EXPERT = re.compile(r"(?:layer\.(\d+)\.moe\.experts\.(\d+)\.)"
                     r"|(?:layers\.(\d+)\.mlp\.experts\.fedfm_lora\.(\d+)\.)"
                     r"|(?:(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.mlp\.experts\.expert_(\d+)\.)")
_ROW = re.compile(r"(?:layer\.(\d+)\.moe\.router\.weight\.(\d+)$)"
                  r"|(?:layers\.(\d+)\.mlp\.gate\.weight\.(\d+)$)"
                  r"|(?:(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.mlp\.router\.classifier"
                  r"\.weight\.(\d+)$)")
_ROUTER = re.compile(r"(?:\.moe\.router\.weight$)|(?:layers\.\d+\.mlp\.gate\.weight$)"
                     r"|(?:\.mlp\.router\.classifier\.weight$)")
DECODER = 1000  # Switch decoder blocks are MoE block ids 1000 + i (models/hf/moe_switch.py)


def expert_of(key: str) -> tuple[int, int] | None:
    """(block, expert) a flat key belongs to, or None for dense (shared) keys."""
    m = _EXPERT.search(key) or _ROW.search(key)
    if not m:
        return None
    g = [x for x in m.groups() if x is not None]
    if g[0] in ("encoder", "decoder"):
        return int(g[1]) + (DECODER if g[0] == "decoder" else 0), int(g[2])
    return int(g[0]), int(g[1])


def _row(model: nn.Module, base: str, e: int) -> int:
    """Local row of global expert `e` in router weight `base` (cut HF routers keep `fedfm_ids`)."""
    ids = getattr(model.get_submodule(base.rpartition(".")[0]), "fedfm_ids", None)
    return ids.index(e) if ids is not None else e


def to_flat(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model tensors -> flat tensors (router weights split into one row per expert)."""
    out = {}
    for k, t in tensors.items():
        if _ROUTER.search(k):
            out.update({f"{k}.{e}": t[e].clone() for e in range(t.shape[0])})
        else:
            out[k] = t
    return out


def read_flat(model: nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    """Detached copies of the flat `keys` from the model's parameters."""
    params = dict(model.named_parameters())
    out = {}
    for k in keys:
        base, _, e = k.rpartition(".")
        if _ROW.search(k):
            out[k] = params[base][_row(model, base, int(e))].detach().clone()
        else:
            out[k] = params[k].detach().clone()
    return out


def write_flat(model: nn.Module, flat: dict[str, torch.Tensor]) -> None:
    """Copy flat tensors into the model's parameters (router rows into their rows)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, t in flat.items():
            if _ROW.search(k):
                base, _, e = k.rpartition(".")
                params[base][_row(model, base, int(e))].copy_(t)
            elif k in params and params[k].shape == t.shape:
                params[k].copy_(t)
            else:
                raise KeyError(f"payload tensor '{k}' {tuple(t.shape)} does not fit the model")


def select_keys(keys, held: Held, layers: list[int] | None = None) -> list[str]:
    """The dense keys plus the keys of the experts in `held` (held[j]: MoE block j, whose
    block index is layers[j]; default j itself — models with dense blocks between MoE ones)."""
    sets = dict(zip(layers if layers is not None else range(len(held)), map(set, held)))
    out = []
    for k in keys:
        ie = expert_of(k)
        if ie is None or ie[1] in sets[ie[0]]:
            out.append(k)
    return out


def all_held(model: nn.Module) -> Held:
    return [list(range(len(b.moe.experts))) for b in moe_blocks(model)]


# ----------------------------------------------------------------------------------------------
# memory


def param_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def submodel_memory(model: nn.Module) -> int:
    """Bytes to train `model`: all parameters + 3x the trainable ones (grad, AdamW moments)."""
    params = list(model.parameters())
    return param_bytes(params) + 3 * param_bytes(p for p in params if p.requires_grad)


def build_submoe(model: nn.Module, held: Held) -> nn.Module:
    """A copy of `model` holding only the experts in `held` (router rows sliced to match)."""
    sub = copy.deepcopy(model)
    for blk, keep in zip(moe_blocks(sub), held):
        moe = blk.moe
        old = moe.experts
        new = Experts.__new__(Experts)
        nn.ModuleList.__init__(new, [old[e] for e in keep])
        moe.experts = new
        w = moe.router.weight
        moe.router.weight = nn.Parameter(w.detach()[keep].clone(), requires_grad=w.requires_grad)
        moe.held = torch.ones(len(keep), dtype=torch.bool)
    return sub


@dataclass(frozen=True)
class MemoryModel:
    """memory(held) = dense + Σ_{(i,e) held} expert[i][e]   (bytes, see module docstring)."""

    dense: int
    expert: list[list[int]]

    @classmethod
    def of(cls, model: nn.Module) -> MemoryModel:
        costs = []
        for blk in moe_blocks(model):
            row = blk.moe.router.weight
            row_cost = row[0].numel() * row.element_size() * (4 if row.requires_grad else 1)
            costs.append([submodel_memory(ex) + row_cost for ex in blk.moe.experts])
        return cls(submodel_memory(model) - sum(map(sum, costs)), costs)

    def cost(self, held: Held) -> int:
        return self.dense + sum(self.expert[i][e] for i, h in enumerate(held) for e in h)

    @property
    def full(self) -> int:
        return self.dense + sum(map(sum, self.expert))


# ----------------------------------------------------------------------------------------------
# stage 1: threshold search


def select_by_threshold(p: torch.Tensor, theta: float, min_experts: int = 1) -> Held:
    """Per block, experts in descending p until their cumulative p reaches theta."""
    held = []
    for row in p.double():
        order = torch.argsort(-row, stable=True)
        cum = torch.cumsum(row[order], 0)
        n = int(torch.searchsorted(cum, torch.tensor(theta - 1e-9, dtype=cum.dtype))) + 1
        n = max(min_experts, min(n, len(row)))
        held.append(sorted(order[:n].tolist()))
    return held


@dataclass(frozen=True)
class Plan:
    theta: float
    held: Held
    memory: int
    fits: bool


def search_threshold(p: torch.Tensor, mem: MemoryModel, limit: float,
                     min_experts: int = 1) -> Plan:
    """Largest theta in [0, 1] whose selection fits `limit` bytes (binary search over the
    thetas where the selection changes: 0 and every cumulative share)."""
    cum = torch.cumsum(torch.sort(p.double(), dim=1, descending=True).values, dim=1)
    cands = sorted({0.0, *[min(float(c), 1.0) for c in cum.flatten()]})
    lo, hi = 0, len(cands) - 1
    if mem.cost(select_by_threshold(p, cands[0], min_experts)) > limit:
        held = select_by_threshold(p, 0.0, min_experts)
        return Plan(0.0, held, mem.cost(held), False)
    while lo < hi:  # invariant: cands[lo] fits
        mid = (lo + hi + 1) // 2
        if mem.cost(select_by_threshold(p, cands[mid], min_experts)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    held = select_by_threshold(p, cands[lo], min_experts)
    return Plan(cands[lo], held, mem.cost(held), True)


def fill_budget(p: torch.Tensor, held: Held, mem: MemoryModel, limit: float) -> Held:
    """Ablation (`fedmoe.fill_budget`, not in the paper): after the threshold search, add unheld
    experts in descending p (ties: lower expert index, then lower block) while the submodel
    still fits `limit` bytes; the cumulative-p rule stops at theta = 1 even when budget is left
    (experts with p = 0)."""
    out = [set(h) for h in held]
    cand = sorted(((i, e) for i, row in enumerate(p.tolist()) for e in range(len(row))
                   if e not in out[i]), key=lambda ie: (-float(p[ie]), ie[1], ie[0]))
    for i, e in cand:
        if mem.cost(out) + mem.expert[i][e] <= limit:
            out[i].add(e)
    return [sorted(h) for h in out]


def estimate_shares(reports: dict[int, tuple[torch.Tensor, int, str]], task: str,
                    shape: tuple[int, int]) -> torch.Tensor:
    """Server estimate of p for a client that did not profile: the example-weighted mean of the
    reported p of clients with the same task (else of all reporters, else uniform)."""
    same = [(p, n) for p, n, t in reports.values() if t == task] or [
        (p, n) for p, n, _ in reports.values()]
    if not same:
        return torch.full(shape, 1.0 / shape[1], dtype=torch.float64)
    total = sum(n for _, n in same) or len(same)
    return sum(p.double() * ((n or 1) / total) for p, n in same)
