"""What trains and what travels, declared once per algorithm (torchtune's `adapter_params()`).

    trains    = the model's tensors with requires_grad after `prepare_model` (model.finetune:
                LoRA + head | everything but the embeddings | the head)
    private   = the part of `trains` that never leaves the client (its memory): FedPer's head,
                FedSA's B matrices, every tensor for local-only training
    travels   = trains - private: what the server sends, the client uploads, the upload schema
                declares, validation checks and FedAvg averages

An algorithm states `private` once, as an `Adapter`; `shared`/`private_part`/`schema` are the
only readers. The classification head is spelled once, in fedfm.models.classifier
(`HEAD`, `HEAD_TENSORS`, `is_head`), re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fedfm.models.classifier import HEAD, HEAD_TENSORS, is_head  # noqa: F401  (re-exported)
from fedfm.transport.validation import schema_of

Tensors = dict[str, torch.Tensor]
Schema = dict[str, tuple[tuple[int, ...], torch.dtype]]


def _never(name: str) -> bool:
    return False


def _always(name: str) -> bool:
    return True


@dataclass(frozen=True)
class Adapter:
    """`private(name)`: whether a trained tensor stays on the client (default: none does)."""

    private: Callable[[str], bool] = _never

    def travels(self, name: str) -> bool:
        return not self.private(name)

    def shared(self, tensors: Mapping[str, torch.Tensor]) -> Tensors:
        return {k: v for k, v in tensors.items() if not self.private(k)}

    def private_part(self, tensors: Mapping[str, torch.Tensor]) -> Tensors:
        return {k: v for k, v in tensors.items() if self.private(k)}

    def schema(self, tensors: Mapping[str, torch.Tensor]) -> Schema:
        """The upload schema for a task carrying `tensors`: the travelling ones, as sent."""
        return schema_of(self.shared(tensors))


SHARE_ALL = Adapter()  # FedAvg, FedProx, Ditto's w, FedDPA's global adapter
KEEP_ALL = Adapter(_always)  # local-only training


def personal_head(model) -> Adapter:
    """FedPer: the head is private (for task = generate, whose model has no classification
    head, the model's own `is_personal`: the LoRA of the last block, fedfm.models.causal_lm)."""
    return Adapter(getattr(model, "is_personal", is_head))
