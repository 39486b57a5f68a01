"""The real (non-padding) tokens of the current MoE forward, for the router hooks' expert counts.

A forward pre-hook on the backbone stores the attention mask in a ContextVar; every router hook
(models/hf/moe.py, moe_switch.py) reads it back as a flat (N,) mask when its N tokens match.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch

REAL: ContextVar[torch.Tensor | None] = ContextVar("fedfm_moe_real_tokens", default=None)


def real_mask(n: int) -> torch.Tensor | None:
    """(n,) bool: which of the router's n flattened tokens are real (None: all, or unknown)."""
    m = REAL.get()
    return m.reshape(-1).bool() if m is not None and m.numel() == n else None
