"""One classification head per task for multi-task federations.

    logits = W_t · pool(f(x)) + b_t,   t = the task of the client (or test set) being served

`MultiHead` replaces a Classifier's `head`, so its parameters are named `head.heads.<task>.*`
(they still start with "head.": FedPer keeps them private, `train.head_lr` applies). Which head
answers is set by `active` (the multi-task wrapper sets it from the client's task).
"""

from __future__ import annotations

import torch
from torch import nn

from fedfm.models.classifier import HEAD, new_head


class MultiHead(nn.Module):
    def __init__(self, hidden: int, num_labels: dict[str, int], seed: int = 0):
        super().__init__()
        self.heads = nn.ModuleDict({t: new_head(hidden, n, seed + i)
                                    for i, (t, n) in enumerate(num_labels.items())})
        self.active = next(iter(num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[self.active](x)  # (B, C_active)


def head_prefix(task: str) -> str:
    return f"{HEAD}heads.{task}."


def add_task_heads(model: nn.Module, num_labels: dict[str, int], seed: int) -> MultiHead:
    """Replace `model.head` by one head per task (hidden size read from the old head)."""
    hidden = model.head.in_features
    model.head = MultiHead(hidden, num_labels, seed)
    return model.head
