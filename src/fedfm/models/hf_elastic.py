"""Elastic width for Hugging Face families: SPP, prefix extraction and real subnetworks.

The family registry (fedfm.models.hf.family) names the role of each linear in a block; this
module turns those roles into elastic dimensions. Per block, with n_rep = heads // kv_heads and
hd = head_dim, the units are **kv groups** g (a kv head and the n_rep query heads that read it;
g = heads for MHA) and **FFN neurons** f:

    role   weight axis kept (Linear (out, in); HF Conv1D (in, out) swaps)   size kept
    q      out rows  (+ bias)                                               g · n_rep · hd
    k, v   out rows  (+ bias)                                               g · hd
    o      in columns (bias whole)                                          g · n_rep · hd
    up, gate  out rows (+ bias)                                             f
    down   in columns (bias whole)                                          f
    norms (LayerNorm / RMSNorm, Qwen3's per-head_dim q_norm/k_norm), o/down biases: whole

A fused projection (GPT-2 `c_attn`, Conv1D (H, 3H) = [q | k | v] on the out axis) is held by
the server in **canonical form**: one tensor per segment, `<path>.weight@q` etc., so every
elastic tensor is a prefix and HeteroFL's coverage mean applies unchanged; a subnetwork fuses
its segments back (and sets `attn.split_size`).

SPP (function-preserving; RaFFM, Yu et al. 2023, made GQA- and RoPE-aware):
    group score  S_g = ||K_g||₁ + ||V_g||₁ + Σ_{q heads h of g} (||Q_h||₁ + ||O_{:,h}||₁)
    q heads ranked inside their group by ||Q_h||₁ + ||O_{:,h}||₁ (they share the group's k/v)
    within-head q/k rows by (||Q_h[i]||₁ + ||K_h[i]||₁)/2 ONLY for absolute-position models
      (`rope = False`) with MHA: RoPE rotates dimension pairs (i, i + hd/2), so under RoPE the
      dimensions of a head cannot be reordered (relative error 1.06 measured) nor cut
    FFN neuron score ||Up_j||₁ + ||Gate_j||₁ + ||Down_{:,j}||₁ (gate and up rows move together)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fedfm.core.errors import PayloadError
from fedfm.models.elastic import Widths

Tensors = Mapping[str, torch.Tensor]
ATTN_ROLES = ("q", "k", "v", "o")
MLP_ROLES = ("up", "gate", "down")
UNIT = {"q": "qh", "k": "kv", "v": "kv", "o": "qh", "up": "ffn", "gate": "ffn", "down": "ffn"}
OUT_SIDE = {"q": True, "k": True, "v": True, "o": False, "up": True, "gate": True, "down": False}


@dataclass(frozen=True)
class Geometry:
    """What elastic slicing needs of a family: role paths inside a block and sizes."""

    blocks: str  # key prefix of block i's tensors is f"{blocks}.{i}."
    num_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    roles: dict  # role -> module path inside a block (q/k/v/o/up/gate/down; fused "qkv")
    attn_conv1d: bool = False
    mlp_conv1d: bool = False
    qkv_order: tuple = ("q", "k", "v")
    rope: bool = True

    @property
    def n_rep(self) -> int:
        return self.heads // self.kv_heads

    def conv1d(self, role: str) -> bool:
        return self.attn_conv1d if role in ATTN_ROLES else self.mlp_conv1d

    def path(self, block: int, role: str) -> str:
        """Canonical key stem of a role in block i (fused segments get `@q`-style names)."""
        if role in ATTN_ROLES[:3] and "qkv" in self.roles:
            return f"{self.blocks}.{block}.{self.roles['qkv']}@{role}"
        return f"{self.blocks}.{block}.{self.roles[role]}"

    def has(self, role: str) -> bool:
        return role in self.roles or (role in ATTN_ROLES[:3] and "qkv" in self.roles)


def full_widths(geo: Geometry) -> Widths:
    """Every kv group and neuron (`Widths.heads` counts kv GROUPS for HF families)."""
    return Widths.uniform(geo.num_layers, geo.kv_heads, geo.ffn)


def _keys(stem: str) -> tuple[str, str]:
    """(weight key, bias key) of a canonical stem (`a.b@q` -> `a.b.weight@q`)."""
    if "@" in stem:
        base, seg = stem.split("@")
        return f"{base}.weight@{seg}", f"{base}.bias@{seg}"
    return f"{stem}.weight", f"{stem}.bias"


def weight_axis(geo: Geometry, role: str) -> int:
    """Axis of the role's weight that holds its elastic units."""
    out_axis = 1 if geo.conv1d(role) else 0
    return out_axis if OUT_SIDE[role] else 1 - out_axis


def unit_size(geo: Geometry, role: str, groups: int, ffn: int) -> int:
    u = UNIT[role]
    if u == "ffn":
        return ffn
    return groups * geo.head_dim * (geo.n_rep if u == "qh" else 1)


# ---- canonical form (fused segments split) ----------------------------------------------
def split_fused(tensors: Tensors, geo: Geometry) -> dict[str, torch.Tensor]:
    """Native HF names -> canonical: `c_attn.weight` (in, 3H) -> `c_attn.weight@q|k|v`."""
    out = dict(tensors)
    if "qkv" not in geo.roles:
        return out
    for i in range(geo.num_layers):
        stem = f"{geo.blocks}.{i}.{geo.roles['qkv']}"
        for kind in ("weight", "bias"):
            t = out.pop(f"{stem}.{kind}", None)
            if t is None:
                continue
            axis = (1 if geo.attn_conv1d else 0) if kind == "weight" else 0
            kv = t.shape[axis] // (geo.n_rep + 2)  # kept groups · hd (any width)
            sizes = {"q": kv * geo.n_rep, "k": kv, "v": kv}
            parts = t.split([sizes[s] for s in geo.qkv_order], dim=axis)
            for seg, part in zip(geo.qkv_order, parts):
                out[f"{stem}.{kind}@{seg}"] = part.contiguous()
    return out


def fuse(tensors: Tensors, geo: Geometry) -> dict[str, torch.Tensor]:
    """Canonical -> native HF names (segments concatenated in `qkv_order`)."""
    out = dict(tensors)
    if "qkv" not in geo.roles:
        return out
    for i in range(geo.num_layers):
        stem = f"{geo.blocks}.{i}.{geo.roles['qkv']}"
        for kind in ("weight", "bias"):
            keys = [f"{stem}.{kind}@{s}" for s in geo.qkv_order]
            if not all(k in out for k in keys):
                continue
            axis = (1 if geo.attn_conv1d else 0) if kind == "weight" else 0
            out[f"{stem}.{kind}"] = torch.cat([out.pop(k) for k in keys], dim=axis)
    return out


# ---- extraction -------------------------------------------------------------------------
def elastic_index(geo: Geometry) -> dict[str, tuple[int, str, int, str]]:
    """canonical key -> (block, role, axis, "w" | "b") for every elastic tensor."""
    out = {}
    for i in range(geo.num_layers):
        for role in ATTN_ROLES + MLP_ROLES:
            if not geo.has(role):
                continue
            wk, bk = _keys(geo.path(i, role))
            out[wk] = (i, role, weight_axis(geo, role), "w")
            if OUT_SIDE[role]:
                out[bk] = (i, role, 0, "b")
    return out


def extract(full: Tensors, geo: Geometry, w: Widths) -> dict[str, torch.Tensor]:
    """The prefix every tensor keeps at widths `w` (canonical form in, canonical out)."""
    index, out = elastic_index(geo), {}
    for k, v in full.items():
        where = index.get(k)
        if where is None:
            out[k] = v.clone()
            continue
        block, role, axis, _ = where
        keep = unit_size(geo, role, w.heads[block], w.ffn[block])
        out[k] = v.narrow(axis, 0, keep).clone()
    return out


# ---- SPP --------------------------------------------------------------------------------
def _l1(t: torch.Tensor, axis: int) -> torch.Tensor:
    """L1 norm of each slice along `axis` (summing every other axis)."""
    dims = [d for d in range(t.dim()) if d != axis]
    return t.abs().sum(dims) if dims else t.abs()


def _expand(order: torch.Tensor, size: int) -> torch.Tensor:
    return (order[:, None] * size + torch.arange(size)).reshape(-1)


def _unit_l1(t: Tensors, geo: Geometry, block: int, role: str) -> torch.Tensor:
    wk, _ = _keys(geo.path(block, role))
    return _l1(t[wk].float(), weight_axis(geo, role))


def _orders(t: Tensors, geo: Geometry, block: int) -> dict[str, torch.Tensor]:
    """Index orders (most salient first) per unit kind: qh rows, kv rows, q/k rows, ffn."""
    hd, g, n_rep = geo.head_dim, geo.kv_heads, geo.n_rep
    qh = (_unit_l1(t, geo, block, "q") + _unit_l1(t, geo, block, "o")).view(g, n_rep, hd).sum(-1)
    kv = (_unit_l1(t, geo, block, "k") + _unit_l1(t, geo, block, "v")).view(g, hd).sum(-1)
    groups = torch.argsort(kv + qh.sum(1), descending=True, stable=True)  # (g,)
    inner = torch.argsort(qh[groups], dim=1, descending=True, stable=True)  # (g, n_rep)
    heads = (groups[:, None] * n_rep + inner).reshape(-1)  # q-head order
    qk_rows = None
    if not geo.rope and n_rep == 1:  # within-head q/k dims (absolute positions only)
        s = (_unit_l1(t, geo, block, "q") + _unit_l1(t, geo, block, "k")).view(g, hd)
        within = torch.argsort(s[heads], dim=1, descending=True, stable=True)  # (heads, hd)
        qk_rows = (heads[:, None] * hd + within).reshape(-1)
    ffn = _unit_l1(t, geo, block, "up") + _unit_l1(t, geo, block, "down")
    if geo.has("gate"):
        ffn = ffn + _unit_l1(t, geo, block, "gate")
    return {"qh": _expand(heads, hd), "kv": _expand(groups, hd),
            "qk": qk_rows, "ffn": torch.argsort(ffn, descending=True, stable=True)}


def spp(tensors: Tensors, geo: Geometry) -> dict[str, torch.Tensor]:
    """SPP on every block (canonical form); returns a reordered copy."""
    out = dict(tensors)
    index = elastic_index(geo)
    orders = [_orders(out, geo, i) for i in range(geo.num_layers)]
    for k, (block, role, axis, _) in index.items():
        if k not in out:
            continue
        o = orders[block]
        order = o[UNIT[role]]
        if role in ("q", "k") and o["qk"] is not None:
            order = o["qk"]
        out[k] = out[k].index_select(axis, order)
    return out


# ---- a real subnetwork cut from the wrapped HF modules ----------------------------------
def _sliced_module(old: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
                   conv1d: bool) -> nn.Module:
    """A copy of a Linear / HF Conv1D holding `weight` (and `bias`) as new Parameters."""
    new = copy.copy(old)
    new._parameters = dict(old._parameters)
    new.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=False)
    if conv1d:
        new.nx, new.nf = weight.shape
    else:
        new.in_features, new.out_features = weight.shape[1], weight.shape[0]
    return new


def _fixups(block: nn.Module, geo: Geometry, groups: int) -> None:
    """Per-module head counts after a cut (attention code reshapes with -1 heads)."""
    heads, hd = groups * geo.n_rep, geo.head_dim
    attn_path = (geo.roles.get("qkv") or geo.roles["q"]).rsplit(".", 1)[0]
    attn = block.get_submodule(attn_path)
    for name, value in (("num_heads", heads), ("num_attention_heads", heads),
                        ("num_key_value_heads", groups), ("all_head_size", heads * hd),
                        ("split_size", heads * hd)):
        if hasattr(attn, name):
            setattr(attn, name, value)
    if "qkv" in geo.roles and geo.kv_heads != geo.heads:
        raise PayloadError("fused qkv with GQA is not supported")


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def subnetwork(model: nn.Module, geo: Geometry, w: Widths, tensors: Tensors,
               prefix: str = "") -> nn.Module:
    """A structural copy of `model` whose blocks hold `tensors` (canonical, sliced to `w`).

    Parameters and buffers not in `tensors` (frozen embeddings, rotary tables) are SHARED with
    `model`, not copied; every block tensor becomes a new Parameter of the subnetwork's shape.
    `prefix` is the key prefix of `model`'s own names inside `tensors` (e.g. "backbone.").
    """
    memo = {id(p): p for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    sub = copy.deepcopy(model, memo)
    native = fuse({k.removeprefix(prefix): v for k, v in tensors.items()
                   if k.startswith(prefix)}, _unprefixed(geo, prefix))
    blocks = sub.get_submodule(geo.blocks.removeprefix(prefix))
    for i, block in enumerate(blocks):
        for role, rel in geo.roles.items():
            stem = f"{geo.blocks.removeprefix(prefix)}.{i}.{rel}"
            weight = native.get(f"{stem}.weight")
            if weight is None:
                raise PayloadError(f"subnetwork lacks '{prefix}{stem}.weight'")
            conv = geo.attn_conv1d if role in ATTN_ROLES + ("qkv",) else geo.mlp_conv1d
            mod = _sliced_module(block.get_submodule(rel), weight, native.get(f"{stem}.bias"), conv)
            set_module(block, rel, mod)
        _fixups(block, geo, w.heads[i])
    params = dict(sub.named_parameters())
    for k, v in native.items():  # norms and whole biases of the blocks, final norm
        if k in params and params[k].shape == v.shape and params[k] is not v:
            set_module_param(sub, k, v)
    return sub


def set_module_param(root: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    mod = root.get_submodule(owner) if owner else root
    mod._parameters[attr] = nn.Parameter(value, requires_grad=False)


def _unprefixed(geo: Geometry, prefix: str) -> Geometry:
    from dataclasses import replace

    return replace(geo, blocks=geo.blocks.removeprefix(prefix))
