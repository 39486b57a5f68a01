"""Elastic widths and the prefix arithmetic RaFFM / HeteroFL aggregate with.

`Widths` = per-block kept heads (kv groups on Hugging Face families) and kept FFN neurons; a
subnetwork is a *prefix* of every elastic dimension (after SPP, models/hf_elastic.py, has put the
most salient units first), so a received sub-tensor lands on the prefix its own shape spans
(`prefix_index`), and the heterogeneous mean is taken entry by entry (`coverage_mean`).
Slicing, SPP and the real subnetworks of every registered family (MiniLM's BERT included) live
in models/hf_elastic.py and models/hf_raffm.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedfm.errors import PayloadError

Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Widths:
    """Per-block widths of a subnetwork: kept heads and kept FFN neurons."""

    heads: tuple[int, ...]
    ffn: tuple[int, ...]

    @classmethod
    def of(cls, spec) -> Widths:
        """The full widths of a spec with per-block `heads` and `ffn` (hf_raffm.ElasticSpec)."""
        return cls(tuple(spec.heads), tuple(spec.ffn))

    @classmethod
    def uniform(cls, layers: int, heads: int, ffn: int) -> Widths:
        return cls((heads,) * layers, (ffn,) * layers)

    def to_json(self) -> dict[str, list[int]]:
        return {"heads": list(self.heads), "ffn": list(self.ffn)}


def prefix_index(full_shape: Sequence[int], sub: torch.Tensor, name: str) -> tuple[slice, ...]:
    """Where a received sub-tensor lands: the prefix its own shape spans (checked)."""
    if sub.dim() != len(full_shape) or any(s > f for s, f in zip(sub.shape, full_shape)):
        raise PayloadError(f"'{name}': shape {tuple(sub.shape)} does not fit the super-network's "
                           f"{tuple(full_shape)}")
    return tuple(slice(0, s) for s in sub.shape)


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
