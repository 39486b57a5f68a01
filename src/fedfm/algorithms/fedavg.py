"""FedAvg (McMahan et al. 2017) over the tensors that travel (LoRA + head, full model, or head).

Server:  θ_{t+1} = Σ_k n_k θ_k / Σ_k n_k  over the sampled clients' uploaded tensors.
Client:  start from θ_t (+ its private tensors from memory), run local epochs of AdamW on
         CE(f(x; θ), y) + extra(θ), upload what travels, keep what is private.
`mu > 0` adds FedProx's proximal term (mu/2)·||θ - θ_t||² inside the client update (fedprox).

The class is FedAvg's parts, composed: an `Adapter` (fedfm.algorithms.adapter) says which
trained tensors stay private (FedPer's head, FedSA's B, local's everything), `personalise`
fine-tunes before a personal evaluation (FedAvg-FT), and `update` / `evaluate` replace the
client half (Ditto, FedDPA). No algorithm subclasses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedfm.algorithms import registry
from fedfm.algorithms.adapter import SHARE_ALL, Adapter
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.env import Env
from fedfm.algorithms.server import ServerState
from fedfm.algorithms.tasks import global_result
from fedfm.algorithms.training import param_groups, train_local
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier, get_tensors, set_tensors, trainable_names
from fedfm.transport.messages import (
    ClientTask,
    ClientUpdate,
    EvalResult,
    TrainReport,
    fields_of,
    read_payload,
)

# (model holding the global tensors, client data, ctx) -> extra metrics; may change the model
Personalise = Callable[[Classifier, ClientData, ClientContext], dict[str, Any]]
ClientHalf = Callable[[ClientTask, Classifier, ClientData, ClientMemory, ClientContext],
                      ClientUpdate]


def proximal_term(model: Classifier, anchor: dict[str, torch.Tensor], mu: float):
    """extra(θ) = (mu / 2) · Σ ||θ - θ_anchor||² over the anchored tensors."""
    params = dict(model.named_parameters())
    pairs = [(params[k], v) for k, v in anchor.items()]
    pairs = [(p, a.to(p.device)) for p, a in pairs]  # the anchor arrives on the CPU
    return lambda: 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in pairs)


def train_on(model: Classifier, data: ClientData, env: Env, ctx: ClientContext,
             mu: float = 0.0, anchor: dict[str, torch.Tensor] | None = None) -> float:
    """Train the model's trainable tensors on the client's train split; returns mean loss."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = param_groups(named, env.train.lr, env.train.head_lr)
    extra = proximal_term(model, anchor, mu) if mu > 0 and anchor else None
    stats = train_local(groups, data.train, env.task.loss_fn(model), env.train,
                        ctx.generator(), extra)
    return stats.loss


def evaluate_metrics(model: Classifier, split: Split, env: Env) -> dict[str, Any]:
    """The evaluation's wire form: EvalResult's fields (+ generation scores)."""
    return env.task.metrics(model, split)


class FedAvg(ServerState):
    """Global tensors = the average of what travels; private tensors stay in client memory."""

    def __init__(self, env: Env, name: str = "fedavg", *, mu: float = 0.0,
                 adapter: Callable[[Classifier], Adapter] = lambda model: SHARE_ALL,
                 global_model: bool = True, personalise: Personalise | None = None,
                 update: ClientHalf | None = None, evaluate: ClientHalf | None = None):
        self.env, self.name, self.mu = env, name, mu
        self.has_global_model = global_model
        self.adapter_of, self.adapter = adapter, SHARE_ALL
        self.personalise = personalise  # e.g. FedAvg-FT: fine-tune the copy before evaluating
        self._update, self._evaluate = update, evaluate
        self.init_private: dict[str, torch.Tensor] = {}  # seeded: the same in every process
        self.global_: dict[str, torch.Tensor] = {}

    def prepare_model(self, model: Classifier) -> None:
        self.env.finetune.apply(model)
        self.adapter = self.adapter_of(model)
        self.init_private = get_tensors(model, self.private_names(model))

    def private_names(self, model: Classifier) -> list[str]:
        return [n for n in trainable_names(model) if self.adapter.private(n)]

    def upload_schema(self, task: ClientTask) -> dict[str, tuple[tuple[int, ...], Any]]:
        return self.adapter.schema(task.tensors)

    def init_server(self, model: Classifier) -> None:
        self.global_ = self.adapter.shared(get_tensors(model))

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(rnd, c, self.global_) for c in clients]

    def load(self, task: ClientTask, model: Classifier, memory: ClientMemory) -> None:
        """Shared tensors from the task, private ones from memory (its initial value the first
        time the client is sampled)."""
        set_tensors(model, dict(task.tensors))
        if self.init_private:
            set_tensors(model, memory.tensors or self.init_private)

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        if self._update is not None:
            return self._update(task, model, data, memory, ctx)
        self.load(task, model, memory)
        loss = train_on(model, data, self.env, ctx, self.mu, dict(task.tensors))
        if self.init_private:
            memory.tensors = get_tensors(model, self.private_names(model))
        out = get_tensors(model, list(task.tensors))
        return ClientUpdate(task.round, task.client_id, len(data.train), out,
                            fields_of(TrainReport(loss)))

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        if not updates or not self.global_:
            return {}
        agg, extras = self.env.averaging.updates(rnd, updates, self.global_)
        self.global_ = {**self.global_, **agg}  # a tensor no client sent keeps its value
        return extras

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(rnd, c, self.global_, kind="evaluate") for c in clients]

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        if self._evaluate is not None:
            return self._evaluate(task, model, data, memory, ctx)
        self.load(task, model, memory)
        extra = self.personalise(model, data, ctx) if self.personalise else {}
        m = evaluate_metrics(model, data.test, self.env)
        total = read_payload(EvalResult, m).total
        return ClientUpdate(task.round, task.client_id, total, {}, {**m, **extra})

    def evaluate_global(self, model: Classifier, split: Split) -> float | dict | None:
        """Accuracy on the pooled test set ({"acc_global", "loss_global"} for generate);
        None without a global model (FedPer, FedSA, local)."""
        if not self.has_global_model:
            return None
        set_tensors(model, self.global_)
        return global_result(evaluate_metrics(model, split, self.env))



registry.register(
    "fedavg", lambda opts, env: FedAvg(env), None,
    "FedAvg over LoRA + head (model.finetune = lora | full | head)", capabilities=AVERAGING,
    tasks=("classify", "generate"), multitask=True, stateless=True,
)
