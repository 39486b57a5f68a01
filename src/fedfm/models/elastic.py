"""Elastic widths and the prefix arithmetic RaFFM / HeteroFL aggregate with.

`Widths` = per-block kept heads (kv groups on Hugging Face families) and kept FFN neurons; a
subnetwork is a *prefix* of every elastic dimension (after SPP, models/hf_elastic.py, has put the
most salient units first), so a received sub-tensor lands on the prefix its own shape spans
(`prefix_index`), and the heterogeneous mean is taken entry by entry
(`algorithms.aggregation.masked_mean`).
Slicing, SPP and the real subnetworks of every registered family (MiniLM's BERT included) live
in models/hf_elastic.py and models/hf_raffm.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedfm.core.errors import PayloadError

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
