"""The world's handles an algorithm is built from: flat, typed, every field defaulted.

An algorithm never sees the RunConfig. Its registry row builds it from two things:

    factory(options, env) -> Algorithm
      options   its own frozen dataclass ([fedprox] mu, [fedsa] head, ...), or None
      env       the handles below: how to train (TrainConfig), what a run learns (TaskSpec),
                how LoRA / unfreezing is applied (Finetune), how updates are averaged
                (Averaging: [aggregation] + [dp]), the clients' resource budgets

`from_config(cfg, num_labels, num_clients)` is the builder, and the only place that reads a
RunConfig for an algorithm. A unit test builds any algorithm with `Env(num_labels=4,
num_clients=3)` and a tiny model, no config or world needed (tests/test_algorithm_env.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from fedfm.core.reliability import AggregationConfig, DPConfig
from fedfm.core.resources import ClientProfile, ResourcesConfig, client_profiles
from fedfm.core.schema import ModelConfig, SamplingConfig, TrainConfig
from fedfm.transport.messages import EvalResult, read_payload

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Finetune:
    """Which weights train (`model.finetune` = lora | full | head) and the LoRA shape."""

    mode: str = "lora"
    targets: tuple[str, ...] = ("query", "value")
    rank: int = 8
    alpha: float = 16.0
    seed: int = 0  # LoRA's initial A: identical in every process

    @property
    def scale(self) -> float:
        """s = α / r, LoRA's output scale."""
        return self.alpha / self.rank

    def apply(self, model) -> None:
        """Inject LoRA / unfreeze on `model` (deterministic from `seed`)."""
        from fedfm.models.finetune import configure_finetune

        configure_finetune(model, self.mode, self.targets, self.rank, self.alpha, self.seed)


@dataclass(frozen=True)
class TaskSpec:
    """What a run learns (`task` = classify | generate): its loss and its evaluation."""

    kind: str = "classify"
    eval_batch_size: int = 64
    precision: str = "fp32"
    max_new_tokens: int = 32

    def loss_fn(self, model):
        """(ids, mask, labels) -> loss for the shared local-training loop."""
        from fedfm.algorithms.tasks import loss_for

        return loss_for(model, self.kind)

    def metrics(self, model, split) -> dict[str, Any]:
        """The evaluation's wire form: EvalResult's fields (+ generation scores)."""
        from fedfm.algorithms.tasks import evaluate_as

        return evaluate_as(model, split, self.kind, self.eval_batch_size, self.max_new_tokens,
                           self.precision)

    def evaluate(self, model, split) -> EvalResult:
        """Correct of total (+ the mean response-token loss, for generate)."""
        return read_payload(EvalResult, self.metrics(model, split), "evaluation")


@dataclass(frozen=True)
class Averaging:
    """The one averaging hook every averaging algorithm calls: the masked weighted mean of
    fedfm.algorithms.aggregation with the [aggregation] rule and [dp] applied.

    `sampling` and `num_clients` give DP's accountant the sampling rate q."""

    aggregation: AggregationConfig = AggregationConfig()
    dp: DPConfig = DPConfig()
    seed: int = 0
    sampling: SamplingConfig = SamplingConfig()
    num_clients: int = 1

    def _view(self) -> SimpleNamespace:  # the attributes aggregation.py / privacy.py read
        return SimpleNamespace(aggregation=self.aggregation, dp=self.dp, seed=self.seed,
                               sampling=self.sampling,
                               data=SimpleNamespace(num_clients=self.num_clients))

    def updates(self, rnd: int, updates: Sequence, reference: Tensors | None = None
                ) -> tuple[Tensors, dict[str, Any]]:
        """Aggregate validated ClientUpdates; `reference` = the tensors clients started from."""
        from fedfm.algorithms.aggregation import aggregate_updates

        return aggregate_updates(self._view(), rnd, updates, reference)

    def masked(self, rnd: int, sets: Sequence[Tensors], weights: Sequence[float],
               reference: Tensors | None = None, *, client_ids: Sequence[int] | None = None,
               denominator: str = "coverage") -> tuple[Tensors, dict[str, Any]]:
        """Partial / prefix-slice uploads (RaFFM, HeteroFL, FedMS, FedMoE)."""
        from fedfm.algorithms.aggregation import masked_aggregate

        return masked_aggregate(self._view(), rnd, sets, weights, reference,
                                client_ids=client_ids, denominator=denominator)


@dataclass(frozen=True)
class Env:
    """Everything an algorithm may need from the world, flat and defaulted."""

    num_labels: int = 2
    num_clients: int = 1
    seed: int = 0
    rounds: int = 1
    train: TrainConfig = TrainConfig()
    task: TaskSpec = TaskSpec()
    finetune: Finetune = Finetune()
    averaging: Averaging = Averaging()
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_length: int = 128  # tokens per example (RaFFM's cost model)
    model: ModelConfig = ModelConfig()  # for algorithms that build their own backbone (FedMoE)

    @property
    def eval_batch_size(self) -> int:
        return self.task.eval_batch_size

    @property
    def precision(self) -> str:
        return self.train.precision

    def profiles(self) -> list[ClientProfile]:
        """One resource profile per client (full budget for all when no [resources] tiers)."""
        return client_profiles(self.resources, self.num_clients, self.seed)


def from_config(cfg, num_labels: int, num_clients: int) -> Env:
    """The builder: a RunConfig -> the flat handles (the only RunConfig reader here)."""
    m = cfg.model
    return Env(
        num_labels=num_labels, num_clients=num_clients, seed=cfg.seed, rounds=cfg.rounds,
        train=cfg.train,
        task=TaskSpec(getattr(cfg, "task", "classify"), cfg.eval.batch_size,
                      cfg.train.precision, int(getattr(cfg.eval, "max_new_tokens", 32))),
        finetune=Finetune(m.finetune, tuple(m.lora_targets), m.lora_rank, m.lora_alpha,
                          cfg.seed),
        averaging=Averaging(cfg.aggregation, cfg.dp, cfg.seed, cfg.sampling,
                            cfg.data.num_clients),
        resources=cfg.resources, max_length=m.max_length, model=m,
    )
