"""RaFFM / HeteroFL on Hugging Face backbones: geometry from the family registry, budgets from
the family's role shapes, client subnetworks as Classifiers.

Budget units (a budget b is a fraction of the full model's cost in the same unit), per block l
with g_l kept kv groups (q heads h_l = g_l · n_rep) and f_l kept FFN neurons, counted on the
tensors the server actually holds (gated MLPs, GQA's narrower k/v, biases or none):

    params  Σ_l P_l(g_l, f_l) = Σ_l c0_l + g_l · c_g,l + f_l · c_f,l   (block tensors; the
            frozen embeddings, never cut, are excluded as for MiniLM)
    flops   Σ_l 2·T·Lin_l(g_l, f_l) + 4·T²·h_l·hd     (Lin = weights of the role linears)
    memory  4·(frozen + Σ_l P_l) + 12·Σ_l P_l (grad + Adam m, v; full fine-tuning)
            + 4·B·T·Σ_l (6H + 4·h_l·hd + h_l·T + (3 if gated else 2)·f_l)   (activations)

What the server holds and what travels: the blocks, the final norm and the head, with fused
projections in canonical (split) form. Everything else (token/position embeddings, embedding
norms) is frozen, identical to the public checkpoint every client loads once, never sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedfm.core.errors import ConfigError, PayloadError
from fedfm.models.elastic import Widths
from fedfm.models.hf_elastic import (
    Geometry,
    elastic_index,
    extract,
    split_fused,
    subnetwork,
)

UNITS = ("params", "flops", "memory")


def is_hf(backbone: nn.Module) -> bool:
    return hasattr(backbone, "family") and hasattr(backbone, "base")


def geometry_of(clf: nn.Module, prefix: str = "backbone.") -> Geometry:
    """The elastic geometry of a Classifier on an HFBackbone (registered families only)."""
    bb = clf.backbone
    fam, s = bb.family, bb.spec
    if not getattr(fam, "registered", True) or fam.attn is None or fam.mlp is None:
        raise ConfigError(
            f"raffm/heterofl need the roles of every linear layer (q/k/v/o, up/gate/down): "
            f"model type '{fam.name}' has no row in fedfm's family registry. Add a FamilySpec "
            "(docs/models.md) or use fedavg/fedprox/fedper/local/fedms, which run on any model.")
    if fam.mlp.gate_up:
        raise ConfigError(f"raffm/heterofl do not slice fused gate_up projections yet "
                          f"('{fam.name}'); use another family or fedavg.")
    roles = {r: p for r, p in fam.roles().items() if r in ("q", "k", "v", "o", "qkv", "up",
                                                              "gate", "down")}
    block0 = bb.blocks[0]
    up = block0.get_submodule(roles["up"]).weight
    ffn = up.shape[1] if fam.mlp.conv1d else up.shape[0]
    geo = Geometry(f"{prefix}{fam.blocks}", s.num_layers, s.heads, s.kv_heads, s.head_dim,
                   int(ffn), roles, fam.attn.conv1d, fam.mlp.conv1d, fam.attn.qkv_order,
                   fam.rope)
    if "qkv" in roles and s.kv_heads != s.heads:
        raise ConfigError(f"raffm/heterofl: fused qkv with grouped kv heads ('{fam.name}') is "
                          "not supported.")
    return geo


def server_names(clf: nn.Module, geo: Geometry) -> list[str]:
    """Native parameter names the server holds: blocks, final norm, head."""
    fam = clf.backbone.family
    keep = [f"{geo.blocks}."] + ([f"backbone.{fam.final_norm}."] if fam.final_norm else [])
    return [n for n, _ in clf.named_parameters() if n.startswith(tuple(keep) + ("head.",))]


def server_tensors(clf: nn.Module, geo: Geometry) -> dict[str, torch.Tensor]:
    params = dict(clf.named_parameters())
    return split_fused({n: params[n].detach().clone() for n in server_names(clf, geo)}, geo)


def frozen_params(clf: nn.Module, geo: Geometry) -> int:
    held = set(server_names(clf, geo))
    return sum(p.numel() for n, p in clf.named_parameters() if n not in held)


@dataclass(frozen=True)
class ElasticSpec:
    """What the sizing rules read (`heads` = kv groups per block for HF families)."""

    num_layers: int
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    head_dim: int


class HFCost:
    """Cost of widths in `unit`, from the server's (canonical) tensors; see the module doc."""

    def __init__(self, geo: Geometry, tensors: dict[str, torch.Tensor], frozen: int,
                 hidden: int, unit: str = "params", seq: int = 128, batch: int = 32):
        if unit not in UNITS:
            raise ConfigError(f"budget unit must be one of {', '.join(UNITS)}, not '{unit}'.")
        self.geo, self.unit, self.seq, self.batch, self.frozen = geo, unit, seq, batch, frozen
        self.hidden, self.gated = hidden, "gate" in geo.roles
        self.spec = ElasticSpec(geo.num_layers, (geo.kv_heads,) * geo.num_layers,
                                (geo.ffn,) * geo.num_layers, geo.head_dim)
        L = geo.num_layers
        self.c0, self.cg, self.cf = [0.0] * L, [0.0] * L, [0.0] * L
        self.lg, self.lf = [0.0] * L, [0.0] * L
        index = elastic_index(geo)
        for k, t in tensors.items():
            if not k.startswith(f"{geo.blocks}."):
                continue
            block = int(k[len(geo.blocks) + 1:].split(".")[0])
            where = index.get(k)
            if where is None:
                self.c0[block] += t.numel()
                continue
            role, kind = where[1], where[3]
            per_g, per_f = (0, t.numel() / geo.ffn) if role in ("up", "gate", "down") else (
                t.numel() / geo.kv_heads, 0)
            self.cg[block] += per_g
            self.cf[block] += per_f
            if kind == "w":
                self.lg[block] += per_g
                self.lf[block] += per_f

    def params(self, w: Widths) -> int:
        return int(round(sum(c + g * cg + f * cf for c, g, f, cg, cf in
                             zip(self.c0, w.heads, w.ffn, self.cg, self.cf))))

    def flops(self, w: Widths) -> float:
        t, hd, n_rep = self.seq, self.geo.head_dim, self.geo.n_rep
        return float(sum(2 * t * (g * lg + f * lf) + 4 * t * t * g * n_rep * hd
                         for g, f, lg, lf in zip(w.heads, w.ffn, self.lg, self.lf)))

    def memory(self, w: Widths) -> float:
        b, t, hd, n_rep = self.batch, self.seq, self.geo.head_dim, self.geo.n_rep
        hidden, p = self.hidden, self.params(w)
        acts = sum(4 * b * t * (6 * hidden + 4 * g * n_rep * hd + g * n_rep * t
                                + (3 if self.gated else 2) * f) for g, f in zip(w.heads, w.ffn))
        return float(4 * (self.frozen + p) + 12 * p + acts)

    def cost(self, w: Widths) -> float:
        return float(getattr(self, self.unit)(w))

    def fraction(self, w: Widths) -> float:
        return self.cost(w) / self.cost(Widths.of(self.spec))


def check_task_tensors(clf: nn.Module, geo: Geometry, w: Widths,
                       tensors: dict[str, torch.Tensor]) -> None:
    """PayloadError unless `tensors` are the server's tensors cut to widths `w` (names and
    shapes; computed on the meta device, nothing allocated)."""
    params = dict(clf.named_parameters())
    full = split_fused({n: torch.empty(params[n].shape, device="meta")
                        for n in server_names(clf, geo)}, geo)
    want = {k: tuple(v.shape) for k, v in extract(full, geo, w).items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise PayloadError(f"task tensors do not match widths {list(w.heads)}/{list(w.ffn)}: "
                           f"{len(bad)} differ, e.g. '{bad[0]}' {got.get(bad[0])} vs "
                           f"{want.get(bad[0])}")


def sub_classifier(clf: nn.Module, geo: Geometry, w: Widths,
                   tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The client's real smaller Classifier: blocks/final norm/head from `tensors` (canonical,
    sliced to `w`), embeddings shared with `clf`; everything frozen (the caller unfreezes)."""
    check_task_tensors(clf, geo, w, tensors)
    sub = subnetwork(clf, geo, w, tensors)
    for p in sub.parameters():
        p.requires_grad_(False)
    return sub


def trained_tensors(sub: nn.Module, geo: Geometry) -> dict[str, torch.Tensor]:
    """The sub's trainable tensors in canonical names (fused segments split)."""
    return split_fused({n: p.detach().clone() for n, p in sub.named_parameters()
                        if p.requires_grad}, geo)


__all__ = ["HFCost", "geometry_of", "server_tensors", "sub_classifier", "trained_tensors",
           "extract", "is_hf", "frozen_params"]
