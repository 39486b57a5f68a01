"""LoRA written for fedfm: `y = W x + b + (alpha / r) · B (A x)`, W frozen, A and B trained.

Why our own and not PEFT: FedMS's Sparsely Activated LoRA switches LoRA on and off per block
every round (an inactive LoRA is not applied, not trained, not sent), RaFFM puts LoRA on
subnetworks whose widths differ per block, and FedMoE puts it on individual experts. A
`LoRALinear` is an `nn.Linear` with two extra parameters, so the base keys (`...query.weight`)
stay those of the checkpoint and exports need no renaming. A starts random, B at zero, so a
fresh LoRA leaves the model's function unchanged.

Targets (`model.lora_targets`) are roles of the model's family (`q k v o up gate down qkv
gate_up`, fedfm.models.hf.family), module-name suffixes (`query`, `self_attn.q_proj`), or
`all-linear` (every linear / HF Conv1D layer inside the blocks, peft's convention). The BERT
names `query`/`key`/`value` are aliases of the roles q/k/v on other families (on GPT-2 of the
fused `qkv`), so the default targets work on every family; an unregistered family's default
is all-linear. HF `Conv1D` (weight stored (in, out)) gets `LoRAConv1D`.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from fedfm.core.errors import ConfigError


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

    def merge(self) -> None:
        """W += scale · B A; B = 0 (the function is unchanged)."""
        with torch.no_grad():
            self.weight += self.delta()
            self.lora_B.zero_()


class LoRAConv1D(LoRALinear):
    """LoRA on an HF `Conv1D` (GPT-2): y = x W + b + scale · (x Aᵀ) Bᵀ, W stored (in, out)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator):
        nx, nf = base.weight.shape
        shim = nn.Linear(nx, nf, bias=base.bias is not None, device="meta")
        super().__init__(shim, rank, alpha, generator)
        self.weight, self.bias = base.weight, base.bias  # (in, out), (out,)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        if self.bias is not None:
            y = y + self.bias
        if self.active:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale
        return y

    def merge(self) -> None:
        with torch.no_grad():
            self.weight += self.delta().T
            self.lora_B.zero_()


_BLOCK_LISTS = {"layer", "layers", "h", "block", "blocks"}
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")


def register_block_list(path: str) -> None:
    """Make `block_of` recognise another block-list name (e.g. an unregistered family's)."""
    global _BLOCK
    last = path.rsplit(".", 1)[-1]
    if last and last not in _BLOCK_LISTS:
        _BLOCK_LISTS.add(last)
        names = "|".join(re.escape(n) for n in sorted(_BLOCK_LISTS))
        _BLOCK = re.compile(rf"(?:^|\.)(?:{names})\.(\d+)(?:\.|$)")


def block_of(name: str) -> int | None:
    """Index of the transformer block a parameter/module name belongs to (None if outside)."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def _block_fn(model: nn.Module):
    return getattr(model, "block_of", None) or block_of


_ALIASES = {"query": "q", "key": "k", "value": "v"}
DEFAULT_TARGETS = ("query", "value")


def target_suffixes(model: nn.Module, targets: tuple[str, ...]) -> tuple[set[str], bool]:
    """(module-name suffixes, all_linear) for `targets` on this model's family."""
    family = getattr(model, "family", None)
    roles = family.roles() if family is not None else {}
    if family is not None and not family.registered and tuple(targets) == DEFAULT_TARGETS:
        return set(), True
    out, all_linear = set(), False
    for t in targets:
        if t == "all-linear":
            all_linear = True
        elif t in roles:
            out.add(roles[t])
        elif t in _ALIASES and roles and not any(p.endswith(t) for p in roles.values()):
            role = _ALIASES[t] if _ALIASES[t] in roles else "qkv"
            out.add(roles.get(role, t))
        else:
            out.add(t)
    return out, all_linear


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None \
        and m.weight.dim() == 2


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
    suffixes, all_linear = target_suffixes(model, targets)
    block = _block_fn(model)
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            conv = _is_conv1d(child)
            if isinstance(child, LoRALinear) or not (isinstance(child, nn.Linear) or conv):
                continue
            if all_linear or any(full == t or full.endswith("." + t) for t in suffixes):
                if block(full) is None:
                    continue
                cls = LoRAConv1D if conv else LoRALinear
                setattr(module, child_name, cls(child, rank, alpha, gen))
                replaced.append(full)
    if not replaced:
        raise ConfigError(f"model.lora_targets = {list(targets)} matches no linear layer inside the model's transformer blocks, so LoRA would train nothing. Name modules by the last part(s) of their names, e.g. {sorted({n.rsplit('.', 1)[-1] for n, c in model.named_modules() if isinstance(c, nn.Linear) and block_of(n) is not None})}.")
    return replaced


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def set_active_blocks(model: nn.Module, blocks: set[int] | None) -> None:
    """Switch LoRA on in `blocks` only (None = all blocks)."""
    block = _block_fn(model)
    for name, m in lora_modules(model).items():
        m.set_active(blocks is None or block(name) in blocks)


def lora_param_names(model: nn.Module, blocks: set[int] | None = None) -> list[str]:
    """Names of LoRA parameters, restricted to `blocks` when given."""
    names, block = [], _block_fn(model)
    for name in lora_modules(model):
        if blocks is None or block(name) in blocks:
            names += [f"{name}.lora_A", f"{name}.lora_B"]
    return names


def merge_lora(model: nn.Module) -> None:
    """Fold every active LoRA into its base weight (W += scale · B A) and zero B (for export)."""
    for m in lora_modules(model).values():
        if m.active:
            m.merge()
