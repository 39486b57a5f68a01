"""Two LoRA adapters on the same frozen layers, mixed per example (FedDPA's dual adapter).

Every `LoRALinear` holds the *global* pair (lora_A, lora_B); the *local* pair comes from a dict
keyed like the model's parameters. Inside `dual_lora(model, local, alpha)` each such layer
computes, for example i of the batch,

    y_i = W x_i + b + s · [(1 - α_i) · B_g A_g x_i + α_i · B_l A_l x_i]         α_i ∈ [0, 1]

and the head mixes the same way (a linear head: mixing weights = mixing logits):

    z_i = (1 - α_i) · (W_g f_i + b_g) + α_i · (W_l f_i + b_l),   f_i = pooled features.

Implemented with forward hooks on the existing layers (no module swap): the hook adds
s · α_i · (B_l A_l x_i - B_g A_g x_i) to the layer's own output. α = 0 is the global adapter
alone, α = 1 the local one alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from fedfm.models.classifier import HEAD_TENSORS, Classifier
from fedfm.models.lora import LoRALinear, lora_modules

Tensors = dict[str, torch.Tensor]


def _per_example(alpha: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """α (B,) -> (B, 1, ..., 1) broadcastable against x (B, ..., features)."""
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 1:
        return alpha.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return alpha


def _hook(m: LoRALinear, a_l: torch.Tensor, b_l: torch.Tensor, alpha):
    def hook(module, inputs, out):
        (x,) = inputs
        if not m.active:
            return out
        local = F.linear(F.linear(x, a_l.to(x.device, x.dtype)), b_l.to(x.device, x.dtype))
        glob = F.linear(F.linear(x, m.lora_A), m.lora_B)  # (B, T, out)
        return out + m.scale * _per_example(alpha, x) * (local - glob)

    return hook


@contextlib.contextmanager
def dual_lora(model: Classifier, local: Tensors, alpha: torch.Tensor | float) -> Iterator[None]:
    """Run `model` with its LoRA (global) mixed with the `local` LoRA tensors by α."""
    handles = []
    try:
        for name, m in lora_modules(model.backbone).items():
            key = f"backbone.{name}"
            handles.append(m.register_forward_hook(
                _hook(m, local[f"{key}.lora_A"], local[f"{key}.lora_B"], alpha)))
        yield
    finally:
        for h in handles:
            h.remove()


def dual_forward(model: Classifier, local: Tensors, alpha: torch.Tensor | float,
                 ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features (B, H), mixed logits (B, C)) of the dual-adapter model."""
    with dual_lora(model, local, alpha):
        f = model.features(ids, mask)  # (B, H)
    z_g = model.head(f)  # (B, C)
    w, b = (local[k].to(f.device, f.dtype) for k in HEAD_TENSORS)  # the local adapter's head
    z_l = F.linear(f, w, b)
    a = _per_example(alpha, z_g)
    return f.to(ids.device), ((1 - a) * z_g + a * z_l).to(ids.device)  # logits where the ids are
