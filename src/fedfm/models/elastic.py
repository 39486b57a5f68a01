"""Elastic BERT: salient parameter prioritisation (SPP), real subnetworks, scatter back.

Works on name -> tensor dicts in the super-network's coordinates (any key prefix, e.g.
`backbone.encoder.layer.3.attention.self.query.weight`), so the server never needs a module.

Per block i, with hd = head_dim and heads/neurons already sorted most-salient first:

    query/key/value .weight (nh·hd, H), .bias (nh·hd,)   keep rows    [: h·hd]
    attention.output.dense.weight (H, nh·hd)             keep columns [: h·hd]
    intermediate.dense.weight (F, H), .bias (F,)         keep rows    [: f]
    output.dense.weight (H, F)                           keep columns [: f]
    everything else (LayerNorms, output biases, head)    kept whole

A subnetwork is therefore a *prefix* of every elastic dimension: extraction is slicing, and
scattering back writes the same prefix. SPP permutes those dimensions without changing the
function (RaFFM, Yu et al. 2023):

    within head h:  s_i = (||W_q[h,i,:]||_1 + ||W_k[h,i,:]||_1) / 2,  rows of q and k permuted
                    jointly (q·k sums over i, so scores are unchanged)
    heads:          s_h = ||W_q[h]||_1 + ||W_k[h]||_1 + ||W_v[h]||_1 + ||W_o[:, h]||_1,  q/k/v
                    row blocks, biases and W_o column blocks permuted jointly
    FFN neuron j:   s_j = ||W_1[j,:]||_1 + ||W_2[:,j]||_1,  W_1 rows, b_1, W_2 columns jointly
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from fedfm.core.errors import PayloadError
from fedfm.models.bert import Bert, EncoderSpec

Tensors = Mapping[str, torch.Tensor]

_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.(.+)$")
# suffix -> (elastic dimension, tensor axis it lives on)
_ELASTIC = {
    "attention.self.query.weight": ("heads", 0), "attention.self.query.bias": ("heads", 0),
    "attention.self.key.weight": ("heads", 0), "attention.self.key.bias": ("heads", 0),
    "attention.self.value.weight": ("heads", 0), "attention.self.value.bias": ("heads", 0),
    "attention.output.dense.weight": ("heads", 1),
    "intermediate.dense.weight": ("ffn", 0), "intermediate.dense.bias": ("ffn", 0),
    "output.dense.weight": ("ffn", 1),
}


@dataclass(frozen=True)
class Widths:
    """Per-block widths of a subnetwork: kept heads and kept FFN neurons."""

    heads: tuple[int, ...]
    ffn: tuple[int, ...]

    @classmethod
    def of(cls, spec: EncoderSpec) -> Widths:
        return cls(tuple(spec.heads), tuple(spec.ffn))

    @classmethod
    def uniform(cls, layers: int, heads: int, ffn: int) -> Widths:
        return cls((heads,) * layers, (ffn,) * layers)

    def spec(self, full: EncoderSpec) -> EncoderSpec:
        return replace(full, heads=self.heads, ffn=self.ffn)

    def to_json(self) -> dict[str, list[int]]:
        return {"heads": list(self.heads), "ffn": list(self.ffn)}


def elastic_axis(name: str) -> tuple[int, str, int] | None:
    """(block, "heads" | "ffn", axis) for an elastic tensor name, None for a fixed one."""
    m = _LAYER.search(name)
    if not m or m.group(2) not in _ELASTIC:
        return None
    dim, axis = _ELASTIC[m.group(2)]
    return int(m.group(1)), dim, axis


def sub_index(name: str, shape: Sequence[int], widths: Widths, head_dim: int) -> tuple[slice, ...]:
    """The prefix slice of the full tensor `name` (of `shape`) that a subnetwork keeps."""
    idx = [slice(None)] * len(shape)
    where = elastic_axis(name)
    if where is not None:
        block, dim, axis = where
        keep = widths.heads[block] * head_dim if dim == "heads" else widths.ffn[block]
        idx[axis] = slice(0, keep)
    return tuple(idx)


def extract(full: Tensors, widths: Widths, head_dim: int) -> dict[str, torch.Tensor]:
    """Subnetwork tensors: the kept prefix of every tensor (copies, contiguous)."""
    return {k: v[sub_index(k, v.shape, widths, head_dim)].clone() for k, v in full.items()}


def prefix_index(full_shape: Sequence[int], sub: torch.Tensor, name: str) -> tuple[slice, ...]:
    """Where a received sub-tensor lands: the prefix its own shape spans (checked)."""
    if sub.dim() != len(full_shape) or any(s > f for s, f in zip(sub.shape, full_shape)):
        raise PayloadError(f"'{name}': shape {tuple(sub.shape)} does not fit the super-network's "
                           f"{tuple(full_shape)}")
    return tuple(slice(0, s) for s in sub.shape)


def scatter(full: Tensors, sub: Tensors) -> dict[str, torch.Tensor]:
    """A copy of `full` with each sub-tensor written over its prefix."""
    out = {k: v.clone() for k, v in full.items()}
    for name, t in sub.items():
        if name not in out:
            raise PayloadError(f"update tensor '{name}' is not in the super-network")
        out[name][prefix_index(out[name].shape, t, name)] = t.to(out[name].dtype)
    return out


def coverage_mean(full: Tensors, subs: Sequence[Tensors], weights: Sequence[float],
                  rule: str = "coverage") -> dict[str, torch.Tensor]:
    """Heterogeneous aggregation of prefix sub-tensors, entry by entry.

    coverage:     θ[e] = Σ_{k ∋ e} w_k θ_k[e] / Σ_{k ∋ e} w_k   (HeteroFL; k ∋ e: k holds e)
    all_clients:  θ[e] = Σ_{k ∋ e} w_k θ_k[e] / Σ_k w_k          (the RaFFM authors' code)
    Entries no client holds keep their value under both rules.
    """
    if rule not in ("coverage", "all_clients"):
        raise ValueError(f"unknown aggregation rule '{rule}'")
    total = float(sum(weights))
    out = {}
    for name, base in full.items():
        acc = torch.zeros(base.shape, dtype=torch.float64)
        cov = torch.zeros(base.shape, dtype=torch.float64)
        for sub, w in zip(subs, weights):
            if name in sub:
                idx = prefix_index(base.shape, sub[name], name)
                acc[idx] += w * sub[name].to(torch.float64)
                cov[idx] += w
        denom = cov if rule == "coverage" else torch.where(cov > 0, total, 0.0)
        mean = acc / denom.clamp_min(1e-300)
        out[name] = torch.where(cov > 0, mean, base.to(torch.float64)).to(base.dtype)
    return out


def _block_names(tensors: Tensors, block: int) -> dict[str, str]:
    """suffix -> full name for the elastic and attention tensors of one block."""
    pat = re.compile(rf"(?:^|\.)layer\.{block}\.(.+)$")
    return {m.group(1): k for k in tensors if (m := pat.search(k))}


def _permute(t: torch.Tensor, axis: int, order: torch.Tensor) -> torch.Tensor:
    return t.index_select(axis, order)


def _head_rows(order_in_heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Row order from a head order: head h -> rows [h·hd, (h+1)·hd)."""
    return (order_in_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def spp_block(tensors: dict[str, torch.Tensor], block: int, head_dim: int) -> None:
    """Reorder block `block` of `tensors` in place (function-preserving), most salient first."""
    n = _block_names(tensors, block)
    q, k = tensors[n["attention.self.query.weight"]], tensors[n["attention.self.key.weight"]]
    nh = q.shape[0] // head_dim
    # 1) within each head: q/k rows jointly by (|W_q| + |W_k|)_1 / 2
    s = (q.abs().sum(1) + k.abs().sum(1)).view(nh, head_dim) / 2  # (nh, hd)
    within = torch.argsort(s, dim=1, descending=True, stable=True)  # (nh, hd)
    rows = (within + torch.arange(nh)[:, None] * head_dim).reshape(-1)
    for part in ("query", "key"):
        for kind in ("weight", "bias"):
            name = n[f"attention.self.{part}.{kind}"]
            tensors[name] = _permute(tensors[name], 0, rows)
    # 2) heads as wholes: q/k/v rows and W_o columns jointly
    o = tensors[n["attention.output.dense.weight"]]
    score = sum(tensors[n[f"attention.self.{p}.weight"]].abs().sum(1).view(nh, head_dim).sum(1)
                for p in ("query", "key", "value")) + o.abs().sum(0).view(nh, head_dim).sum(1)
    rows = _head_rows(torch.argsort(score, descending=True, stable=True), head_dim)
    for suffix, (dim, axis) in _ELASTIC.items():
        if dim == "heads":
            tensors[n[suffix]] = _permute(tensors[n[suffix]], axis, rows)
    # 3) FFN neurons: W_1 rows, b_1, W_2 columns jointly
    w1, w2 = tensors[n["intermediate.dense.weight"]], tensors[n["output.dense.weight"]]
    order = torch.argsort(w1.abs().sum(1) + w2.abs().sum(0), descending=True, stable=True)
    for suffix, (dim, axis) in _ELASTIC.items():
        if dim == "ffn":
            tensors[n[suffix]] = _permute(tensors[n[suffix]], axis, order)


def spp(tensors: Tensors, head_dim: int) -> dict[str, torch.Tensor]:
    """SPP on every block of a super-network's tensors; returns a reordered copy."""
    out = dict(tensors)
    for block in sorted(_blocks(out)):
        spp_block(out, block, head_dim)
    return out


def _blocks(names: Iterable[str]) -> set[int]:
    return {w[0] for k in names if (w := elastic_axis(k)) is not None}


def backbone_tensors(tensors: Tensors, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The `prefix`-stripped backbone entries of a classifier's tensor dict."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def build_subnetwork(spec: EncoderSpec, blocks: Tensors, embeddings: Tensors) -> Bert:
    """A real smaller `Bert` of `spec` whose parameters ARE the given tensors (no copies).

    `blocks` holds `encoder.layer.*` tensors of the subnetwork's shapes; `embeddings` holds
    `embeddings.*`. Built on the meta device first, so nothing is initialised and no global
    RNG is touched.
    """
    with torch.device("meta"):
        model = Bert(spec)
    state = {**embeddings, **blocks}
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise PayloadError(f"subnetwork lacks {len(missing)} tensors, e.g. '{sorted(missing)[0]}'")
    try:
        model.load_state_dict({k: state[k] for k in model.state_dict()}, assign=True)
    except RuntimeError as e:
        raise PayloadError(f"subnetwork tensors do not match widths {spec.heads}/{spec.ffn}: "
                           f"{str(e).splitlines()[0]}") from None
    return model
