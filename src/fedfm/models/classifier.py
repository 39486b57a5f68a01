"""Foundation model + pooling + classification head, and helpers for its trainable tensors.

logits = W_head · pool(backbone(x)) + b_head, with pool = masked mean over tokens (sentence-
transformers' pooling for MiniLM), the [CLS] vector, or the last real token (decoders).
The backbone is an `HFBackbone` (any Hugging Face model) or fedfm's legacy `Bert`.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("auto", "mean", "cls", "last")


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): mean over real tokens. An image's (B, 1) mask: all are."""
    if attention_mask.shape[1] != h.shape[1]:  # images: never padded
        return h.mean(1)  # (B, H)
    m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def last_token_pool(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): the last real token, for left or right padding alike:
    index = argmax_t (t · mask_t)."""
    t = torch.arange(h.shape[1], device=h.device)
    idx = (attention_mask.to(torch.long) * t).argmax(1)  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), idx]


def pool(h: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H) -> (B, H) by `how` = mean | cls | last."""
    if how == "mean":
        return mean_pool(h, attention_mask)
    if how == "last":
        return last_token_pool(h, attention_mask)
    return h[:, 0]


def resolve_pooling(backbone: nn.Module, pooling: str) -> str:
    """`auto` = the backbone family's pooling (mean for BERT-like encoders, last for decoders)."""
    if pooling != "auto":
        return pooling
    return getattr(backbone.spec, "pooling", "mean")


class Classifier(nn.Module):
    """A sequence classifier: backbone (HFBackbone or Bert) -> pooled features -> linear head."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "auto",
                 seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.pooling = resolve_pooling(backbone, pooling)
        self.head = new_head(backbone.spec.hidden, num_labels, seed)

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pool(h, attention_mask, self.pooling)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids, attention_mask)  # (B, T, H), on the model's device
        return self.pool(h, attention_mask.to(h.device))  # (B, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, C) logits, returned on the inputs' device (the model may sit on a GPU)."""
        return self.head(self.features(input_ids, attention_mask)).to(input_ids.device)


def new_head(hidden: int, num_labels: int, seed: int) -> nn.Linear:
    """A linear head initialised from `seed` (N(0, 0.02), zero bias, as BERT heads)."""
    head = nn.Linear(hidden, num_labels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=gen)
        head.bias.zero_()
    return head


HEAD = "head."  # the classification head's tensors (and multi-task heads) start so
HEAD_TENSORS = ("head.weight", "head.bias")  # the single classification head's tensors


def is_head(name: str) -> bool:
    return name.startswith(HEAD)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def get_tensors(model: nn.Module, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the named parameters (default: the trainable ones)."""
    params = dict(model.named_parameters())
    names = trainable_names(model) if names is None else names
    return {n: params[n].detach().to("cpu", copy=True) for n in names}


def set_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors into the model's parameters in place; names and shapes must match."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            if name not in params:
                raise KeyError(f"model has no parameter '{name}'")
            p = params[name]
            if p.shape != t.shape:
                raise ValueError(f"'{name}': shape {tuple(t.shape)} != model's {tuple(p.shape)}")
            p.copy_(t)


def count_params(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors.values())
