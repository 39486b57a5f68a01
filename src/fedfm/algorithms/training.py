"""The shared local-training loop, evaluation and weighted averaging that algorithms compose.

Local objective (per batch):  L = CE(f(x), y) + extra(θ)   (extra: FedProx's proximal term, an
MoE balance loss, ...). Optimiser: AdamW over the given parameter groups, fresh every round.
`precision="bf16"` runs the forward under CPU autocast; master weights stay fp32.

Round-wise learning-rate schedule (`train.lr_schedule`, `train.lr_min_ratio` = m, R = rounds,
r = 1..R the round being trained):

    constant:  f(r) = 1
    cosine:    f(r) = m + (1 - m) · (1 + cos(π r / R)) / 2      (f(1) ≈ 1, f(R) = m)

as FlowerTune's LLM template anneals the client lr across rounds (lr_r = lr_min +
0.5 (lr_max - lr_min)(1 + cos(π r / R)), lr_min = m · lr_max). Every parameter group's lr
(train.lr, train.head_lr, an algorithm's own groups such as FedMS's gate) is multiplied by the
same f(r) inside `train_local`; the client half runs under `lr_scale(f)` (fedfm.sim.clients.
run_client, which both runtimes use), so no algorithm reads the schedule itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedfm.core.device import autocast  # noqa: F401 (re-exported: training.autocast)
from fedfm.core.schema import TrainConfig
from fedfm.data.federated import Split
from fedfm.models.classifier import is_head

_LR_SCALE: ContextVar[float] = ContextVar("fedfm_lr_scale", default=1.0)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids (B, T), mask (B, T), labels (B,)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainStats:
    loss: float
    steps: int
    examples: int


def cross_entropy_loss(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LossFn:
    """Loss of a logits-producing forward(ids, mask)."""
    return lambda ids, mask, y: F.cross_entropy(forward(ids, mask).float(), y)


def param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float,
                 head_lr: float | None) -> list[dict]:
    """Split parameters into body and head groups (the head may use its own learning rate)."""
    body, head = [], []
    for name, p in named:
        (head if is_head(name) else body).append(p)
    groups = [{"params": body, "lr": lr}] if body else []
    if head:
        groups.append({"params": head, "lr": head_lr or lr})
    return groups


def lr_factor(schedule: str, rnd: int, rounds: int, min_ratio: float) -> float:
    """f(r) of the module docstring for round r = `rnd` (1-based) of `rounds`."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        r = min(max(rnd, 0), rounds)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * r / rounds))
    raise ValueError(f"unknown lr schedule '{schedule}'")


def round_lr_factor(cfg: TrainConfig, rnd: int, rounds: int) -> float:
    """f(r) of the run's schedule for the 0-based round index `rnd` (f counts rounds from 1)."""
    return lr_factor(cfg.lr_schedule, rnd + 1, rounds, cfg.lr_min_ratio)


@contextmanager
def lr_scale(factor: float) -> Iterator[None]:
    """Every `train_local` inside the block multiplies its groups' lr by `factor`."""
    token = _LR_SCALE.set(factor)
    try:
        yield
    finally:
        _LR_SCALE.reset(token)


def scaled(groups: list[dict]) -> list[dict]:
    """The groups with lr x the current `lr_scale` (the same list when the factor is 1)."""
    f = _LR_SCALE.get()
    return groups if f == 1.0 else [{**g, "lr": g["lr"] * f} for g in groups]


def train_local(groups: list[dict], split: Split, loss_fn: LossFn, cfg: TrainConfig,
                generator: torch.Generator,
                extra_loss: Callable[[], torch.Tensor] | None = None) -> TrainStats:
    """`cfg.local_epochs` passes over `split` (at most `cfg.max_steps` steps)."""
    params = [p for g in groups for p in g["params"]]
    if not params:
        return TrainStats(0.0, 0, 0)
    opt = torch.optim.AdamW(scaled(groups), weight_decay=cfg.weight_decay)
    total, steps, seen = 0.0, 0, 0
    for _ in range(cfg.local_epochs):
        for ids, mask, y in split.batches(cfg.batch_size, generator):
            with autocast(cfg.precision):
                loss = loss_fn(ids, mask, y)
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(y)
            steps, seen = steps + 1, seen + len(y)
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                return TrainStats(total / max(seen, 1), steps, seen)
    return TrainStats(total / max(seen, 1), steps, seen)


@torch.inference_mode()
def count_correct(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], split: Split,
                  batch_size: int = 64, precision: str = "fp32") -> tuple[int, int]:
    """(correct, total) of argmax predict(ids, mask) against the labels."""
    correct = 0
    for ids, mask, y in split.batches(batch_size):
        with autocast(precision):
            scores = predict(ids, mask)
        correct += int((scores.argmax(-1) == y).sum())
    return correct, len(split)


def accuracy(predict, split: Split, batch_size: int = 64, precision: str = "fp32") -> float:
    c, n = count_correct(predict, split, batch_size, precision)
    return c / max(n, 1)
