"""LoRA written for fedfm: `y = W x + b + (alpha / r) · B (A x)`, W frozen, A and B trained.

Why our own and not PEFT: FedMS's Sparsely Activated LoRA switches LoRA on and off per block
every round (an inactive LoRA is not applied, not trained, not sent), RaFFM puts LoRA on
subnetworks whose widths differ per block, and FedMoE puts it on individual experts. A
`LoRALinear` is an `nn.Linear` with two extra parameters, so the base keys (`...query.weight`)
stay those of the checkpoint and exports need no renaming. A starts random, B at zero, so a
fresh LoRA leaves the model's function unchanged.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from fedfm.errors import ConfigError


class LoRALinear(nn.Linear):
    """A frozen linear layer with a low-rank update that can be switched off (`active`)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None)
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        a = torch.empty(rank, base.in_features)
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming-uniform(a=sqrt(5)) as in PEFT
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a)  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r)
        self.active = True

    def set_active(self, active: bool) -> None:
        self.active = active
        self.lora_A.requires_grad_(active)
        self.lora_B.requires_grad_(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.active:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale
        return y

    def delta(self) -> torch.Tensor:
        """The effective update `scale · B A` (out, in): what robust aggregation compares."""
        return (self.lora_B @ self.lora_A) * self.scale


_BLOCK = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def block_of(name: str) -> int | None:
    """Index of the transformer block a parameter/module name belongs to (None if outside)."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def inject_lora(
    model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float, seed: int
) -> list[str]:
    """Replace every `nn.Linear` whose last name part is in `targets` by a LoRALinear.

    A target matches a module whose qualified name equals it or ends with "." + target:
    "query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"
    (the last matches both output projections). Only modules inside transformer blocks are
    wrapped. Returns the qualified names replaced; other parameters are left as they are.
    """
    gen = torch.Generator().manual_seed(seed)
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, LoRALinear) or not isinstance(child, nn.Linear):
                continue
            if any(full == t or full.endswith("." + t) for t in targets):
                if block_of(full) is None:
                    continue
                setattr(module, child_name, LoRALinear(child, rank, alpha, gen))
                replaced.append(full)
    if not replaced:
        raise ConfigError(f"model.lora_targets = {list(targets)} matches no linear layer inside the model's transformer blocks, so LoRA would train nothing. Name modules by the last part(s) of their names, e.g. {sorted({n.rsplit('.', 1)[-1] for n, c in model.named_modules() if isinstance(c, nn.Linear) and block_of(n) is not None})}.")
    return replaced


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def set_active_blocks(model: nn.Module, blocks: set[int] | None) -> None:
    """Switch LoRA on in `blocks` only (None = all blocks)."""
    for name, m in lora_modules(model).items():
        m.set_active(blocks is None or block_of(name) in blocks)


def lora_param_names(model: nn.Module, blocks: set[int] | None = None) -> list[str]:
    """Names of LoRA parameters, restricted to `blocks` when given."""
    names = []
    for name in lora_modules(model):
        if blocks is None or block_of(name) in blocks:
            names += [f"{name}.lora_A", f"{name}.lora_B"]
    return names


def merge_lora(model: nn.Module) -> None:
    """Fold every active LoRA into its base weight (W += scale · B A) and zero B (for export)."""
    with torch.no_grad():
        for m in lora_modules(model).values():
            if m.active:
                m.weight += m.delta()
                m.lora_B.zero_()
