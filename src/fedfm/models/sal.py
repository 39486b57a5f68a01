"""Sparsely Activated LoRA (SAL): which blocks' LoRA is active in round t, and the frozen prefix.

FedMS (Wu et al. 2023) activates LoRA progressively. LoRA exists in all L blocks, but only k(t)
of them are *active* (applied, trained, sent):

    step growth (default):  k(t) = min(L, k0 + ceil(t / step))             t = 0-based round
    linear growth:          k(t) = min(L, k0 + ceil((L - k0) · (t + 1) / ramp))
    per-client budget b_c:  k_c(t) = max(1, floor(b_c · k(t)))             (k(t) = 0 stays 0)

Order (which k blocks): top-down = the k blocks nearest the output (back-propagation stops
early), bottom-up = the first k, random = the first k of a permutation seeded by (seed, t).

Frozen prefix. Blocks below the lowest applied LoRA `s` compute the same hidden states every
round, h_s = blocks[0:s](embed(x)), so a client caches h_s per example (memory-bounded) and a
step costs the blocks [s, L) only. The cache is rebuilt when s moves down (and advanced from
the cached states when s moves up).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedfm.core.device import autocast
from fedfm.core.seeds import derive_seed
from fedfm.data.federated import Split
from fedfm.models.lora import block_of

Tensors = dict[str, torch.Tensor]
ORDERS = ("top-down", "bottom-up", "random")
GROWTHS = ("step", "linear")


@dataclass(frozen=True)
class SALSchedule:
    num_layers: int
    k0: int = 1
    step: int = 1
    growth: str = "step"
    ramp: int = 1  # linear growth: rounds to reach all L blocks
    order: str = "top-down"
    seed: int = 0

    def k(self, t: int) -> int:
        """Number of active blocks in round t (0-based)."""
        L = self.num_layers
        if self.growth == "linear":
            return min(L, self.k0 + math.ceil((L - self.k0) * (t + 1) / max(self.ramp, 1)))
        return min(L, self.k0 + math.ceil(t / self.step))

    def ranked(self, t: int) -> list[int]:
        """Blocks in activation order for round t: the active set of size k is the first k."""
        L = self.num_layers
        if self.order == "top-down":
            return list(range(L - 1, -1, -1))
        if self.order == "bottom-up":
            return list(range(L))
        return [int(b) for b in np.random.default_rng(derive_seed(self.seed, t, 0x5A1))
                .permutation(L)]

    def active(self, t: int, budget: float = 1.0) -> set[int]:
        """Active blocks in round t for a client with compute budget `budget` in (0, 1]."""
        return set(self.ranked(t)[: client_k(self.k(t), budget)])


def client_k(k: int, budget: float) -> int:
    """k_c = max(1, floor(budget · k)); k = 0 (head only) stays 0."""
    if k <= 0:
        return 0
    return k if budget >= 1.0 else max(1, math.floor(budget * k))


def blocks_of(names) -> set[int]:
    """Transformer blocks named in parameter names."""
    return {b for b in (block_of(n) for n in names) if b is not None}


def lowest(blocks: set[int], num_layers: int) -> int:
    """The first block with applied LoRA (num_layers when none: the whole encoder is frozen)."""
    return min(blocks) if blocks else num_layers


# ---------------------------------------------------------------------------- frozen prefix


@torch.no_grad()
def frozen_prefix(bert: nn.Module, ids: torch.Tensor, mask: torch.Tensor, end: int,
                  h: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
    """Hidden states entering block `end`: blocks [start, end) over h (default: embed(ids)).

    `bert` is any backbone with the prefix interface (HFBackbone: hooks on the model's own
    forward). The caller guarantees that no LoRA
    is applied in these blocks (they are below `s`).
    """
    return bert.prefix(ids, mask, end, h, start)  # (B, T, H)


class PrefixSource:
    """Batches of example indices plus the hidden states entering block `start` for them.

    `batches` draws the same permutation as `Split.batches` (so cached and uncached runs see
    the same batches) but yields (rows, mask, labels) with rows = example indices (B,);
    `hidden(rows, t)` returns (B, t, H) from the cache, or computes it when there is none.
    """

    def __init__(self, bert: nn.Module, split: Split, start: int, precision: str,
                 cache: torch.Tensor | None = None):
        self.bert, self.split, self.start = bert, split, start
        self.precision, self.cache = precision, cache

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator:
        n = len(self.split)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(0, n, batch_size):
            rows = order[s : s + batch_size]
            mask = self.split.attention_mask[rows]
            t = int(mask.sum(1).max())
            y = self.split.labels[rows]  # (B,) class labels, or (B, T) token labels (generate)
            yield rows, mask[:, :t], (y[:, :t] if y.dim() == 2 else y)

    def hidden(self, rows: torch.Tensor, t: int) -> torch.Tensor:
        """(B, t, H) for text; (B, T, H) with every token for images (their mask is (B, 1))."""
        if self.cache is not None:
            return self.cache[rows] if self.split.is_image else self.cache[rows, :t]
        x, mask = _inputs(self.split, rows, t)
        with autocast(self.precision):
            return frozen_prefix(self.bert, x, mask, self.start)


def real_length(split: Split, bert=None) -> int:
    """Tokens per cached example: the longest real sequence (text), or the number of tokens the
    backbone makes of one image (patches + [CLS] + ...; images are never padded)."""
    if not len(split):
        return 1
    if split.is_image:
        return int(frozen_prefix(bert, *split.rows(torch.arange(1)), 0).shape[1])
    return int(split.attention_mask.sum(1).max())


def cache_nbytes(split: Split, hidden: int, precision: str, bert=None) -> int:
    item = 2 if precision == "bf16" else 4
    return len(split) * real_length(split, bert) * hidden * item


def _inputs(split: Split, rows: torch.Tensor, t: int | None):
    """Model inputs of `rows`: text cut to t tokens (every cache row has the split's longest
    length), images as they are."""
    if split.is_image:
        return split.rows(rows)  # (B, C, H, W), (B, 1)
    return split.input_ids[rows, :t], split.attention_mask[rows, :t]  # (B, t), (B, t)


def build_cache(bert: nn.Module, split: Split, start: int, precision: str, batch_size: int = 64,
                base: torch.Tensor | None = None, base_start: int = 0) -> torch.Tensor:
    """(N, T_max, H) hidden states entering block `start` for every example of `split`.

    With `base` (states entering `base_start` <= start) only blocks [base_start, start) run.
    """
    t_max = None if split.is_image else real_length(split)
    out = []
    for s in range(0, len(split), batch_size):
        ids, mask = _inputs(split, torch.arange(s, min(s + batch_size, len(split))), t_max)
        h = None if base is None else base[s : s + batch_size]
        with autocast(precision):
            out.append(frozen_prefix(bert, ids, mask, start, h, base_start if h is not None else 0))
    return torch.cat(out)  # (N, T_max, H)


def cached_source(bert: nn.Module, split: Split, start: int, precision: str, store: dict,
                  state: dict, name: str, max_bytes: float) -> PrefixSource:
    """A PrefixSource for `split`, reusing/rebuilding the cache kept in a client's memory.

    `store`/`state` are the client's ClientMemory.tensors/.state; the cache lives under
    `prefix.<name>` with its block index in state. Over `max_bytes` nothing is cached.
    """
    key = f"prefix.{name}"
    if cache_nbytes(split, bert.spec.hidden, precision, bert) > max_bytes:
        store.pop(key, None)
        return PrefixSource(bert, split, start, precision)
    old, (old_start, old_prec) = store.get(key), state.get(key, (None, None))
    if old is None or old_start != start or old_prec != precision:
        reuse = old is not None and old_prec == precision and old_start < start
        store[key] = build_cache(bert, split, start, precision,
                                 base=old if reuse else None, base_start=old_start or 0)
        state[key] = (start, precision)
    return PrefixSource(bert, split, start, precision, store[key])
