"""FedAvg (McMahan et al. 2017) over the trainable tensors (LoRA + head, full model, or head).

Server:  θ_{t+1} = Σ_k n_k θ_k / Σ_k n_k  over the sampled clients' trained tensors.
Client:  start from θ_t, run local epochs of AdamW on CE(f(x; θ), y) + extra(θ).
`mu > 0` adds FedProx's proximal term (mu/2)·||θ - θ_t||² inside the client update (see fedprox).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedfm.algorithms import registry, tasks
from fedfm.algorithms.aggregation import aggregate_updates
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.training import param_groups, train_local
from fedfm.core.schema import RunConfig
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier, get_tensors, set_tensors
from fedfm.models.finetune import configure_finetune
from fedfm.transport.messages import ClientTask, ClientUpdate

# (model holding the global tensors, client data, ctx) -> extra metrics; may change the model
Personalise = Callable[[Classifier, ClientData, ClientContext], dict[str, Any]]


def prepare(model: Classifier, cfg: RunConfig) -> None:
    """Inject LoRA / unfreeze per `model.finetune` (deterministic from the run seed)."""
    m = cfg.model
    configure_finetune(model, m.finetune, m.lora_targets, m.lora_rank, m.lora_alpha, cfg.seed)


def proximal_term(model: Classifier, anchor: dict[str, torch.Tensor], mu: float):
    """extra(θ) = (mu / 2) · Σ ||θ - θ_anchor||² over the anchored tensors."""
    params = dict(model.named_parameters())
    pairs = [(params[k], v) for k, v in anchor.items()]
    pairs = [(p, a.to(p.device)) for p, a in pairs]  # the anchor arrives on the CPU
    return lambda: 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in pairs)


def train_on(model: Classifier, data: ClientData, cfg: RunConfig, ctx: ClientContext,
             mu: float = 0.0, anchor: dict[str, torch.Tensor] | None = None) -> float:
    """Train the model's trainable tensors on the client's train split; returns mean loss."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = param_groups(named, cfg.train.lr, cfg.train.head_lr)
    extra = proximal_term(model, anchor, mu) if mu > 0 and anchor else None
    stats = train_local(groups, data.train, tasks.loss_fn(model, cfg), cfg.train,
                        ctx.generator(), extra)
    return stats.loss


def evaluate_on(model: Classifier, split: Split, cfg: RunConfig) -> tuple[int, int]:
    m = tasks.evaluate(model, split, cfg)
    return m["correct"], m["total"]


def evaluate_metrics(model: Classifier, split: Split, cfg: RunConfig) -> dict[str, Any]:
    """{"correct", "total"} (+ "loss": mean response-token loss, for task = generate)."""
    return tasks.evaluate(model, split, cfg)


class FedAvg:
    """Global model = the averaged trainable tensors; every client trains a copy of it."""

    has_global_model = True

    def __init__(self, cfg: RunConfig, name: str = "fedavg", mu: float = 0.0,
                 personalise: Personalise | None = None):
        self.cfg, self.name, self.mu = cfg, name, mu
        self.personalise = personalise  # e.g. FedAvg-FT: fine-tune the copy before evaluating
        self.global_: dict[str, torch.Tensor] = {}

    def prepare_model(self, model: Classifier) -> None:
        prepare(model, self.cfg)

    def init_server(self, model: Classifier) -> None:
        self.global_ = get_tensors(model)

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(rnd, c, self.global_) for c in clients]

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        set_tensors(model, dict(task.tensors))
        loss = train_on(model, data, self.cfg, ctx, self.mu, dict(task.tensors))
        out = get_tensors(model, list(task.tensors))
        return ClientUpdate(task.round, task.client_id, len(data.train), out, {"loss": loss})

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        if not updates:
            return {}
        agg, extras = aggregate_updates(self.cfg, rnd, updates, self.global_)
        self.global_ = {**self.global_, **agg}  # a tensor no client sent keeps its value
        return extras

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(rnd, c, self.global_, kind="evaluate") for c in clients]

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        set_tensors(model, dict(task.tensors))
        extra = self.personalise(model, data, ctx) if self.personalise else {}
        m = evaluate_metrics(model, data.test, self.cfg)
        return ClientUpdate(task.round, task.client_id, m["total"], {}, {**m, **extra})

    def evaluate_global(self, model: Classifier, split: Split) -> float | dict | None:
        """Accuracy on the pooled test set ({"acc_global", "loss_global"} for generate)."""
        set_tensors(model, self.global_)
        return tasks.global_result(evaluate_metrics(model, split, self.cfg))

    def global_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.global_)

    def server_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(self.global_), {}

    def load_server_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.global_ = dict(tensors)


registry.register(
    "fedavg", lambda cfg, opts, nl, nc: FedAvg(cfg), None,
    "FedAvg over LoRA + head (model.finetune = lora | full | head)", capabilities=AVERAGING,
)
