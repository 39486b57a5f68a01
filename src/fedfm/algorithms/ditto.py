"""Ditto (Li et al., "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021): a global model by FedAvg plus a personal model per client, kept near the global one
by a proximal term.

    global:    w_{t+1} = Σ_k n_k w_k / Σ_k n_k,   w_k = local epochs of CE from w_t (FedAvg)
    personal:  v_k ← argmin_v  CE(f(x; v), y) + (λ / 2) · ||v - w_t||²       (same local epochs)

over the trainable tensors (LoRA + head, or whatever `model.finetune` trains). v_k lives in the
client's private memory (initialised to w_t the first time the client is sampled) and is never
sent: a client uploads only its w_k. Personal accuracy = v_k on the client's own test split; a
client never sampled yet has v_k = w_t. acc_global = w_t on the pooled test set. λ → 0: local
training started from the global model; λ → ∞: FedAvg. [aggregation] / [dp] apply to w.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.algorithms import registry
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.env import Env
from fedfm.algorithms.fedavg import FedAvg, train_on
from fedfm.core.errors import ConfigError
from fedfm.core.seeds import derive_seed
from fedfm.data.federated import ClientData
from fedfm.models.classifier import Classifier, get_tensors, set_tensors
from fedfm.transport.messages import ClientTask, ClientUpdate, fields_of


@dataclass(frozen=True)
class DittoOptions:
    lam: float = 0.1  # λ: weight of the proximal term pulling v_k towards w_t

    def check(self) -> None:
        if self.lam < 0:
            raise ConfigError(f"ditto.lam must be >= 0, got {self.lam}.")


@dataclass(frozen=True)
class DittoReport:
    loss: float  # of the global model's local epochs (w_k)
    personal_loss: float  # of the personal model's (v_k)


def ditto_update(env: Env, lam: float):
    """The client half of a training round: FedAvg's update of w, then the personal v_k."""

    def update(task: ClientTask, model: Classifier, data: ClientData, memory: ClientMemory,
               ctx: ClientContext) -> ClientUpdate:
        glob = dict(task.tensors)
        set_tensors(model, glob)
        loss = train_on(model, data, env, ctx)
        out = get_tensors(model, list(glob))
        set_tensors(model, {**glob, **memory.tensors})  # v_k (w_t on first visit)
        personal_ctx = ClientContext(derive_seed(ctx.seed, 0xD1770), ctx.round, ctx.client_id)
        p_loss = train_on(model, data, env, personal_ctx, mu=lam, anchor=glob)
        memory.tensors = get_tensors(model, list(glob))
        return ClientUpdate(task.round, task.client_id, len(data.train), out,
                            fields_of(DittoReport(loss, p_loss)))

    return update


def ditto_evaluate(env: Env):
    def evaluate(task: ClientTask, model: Classifier, data: ClientData, memory: ClientMemory,
                 ctx: ClientContext) -> ClientUpdate:
        set_tensors(model, {**dict(task.tensors), **memory.tensors})
        r = env.task.evaluate(model, data.test)
        return ClientUpdate(task.round, task.client_id, r.total, {}, fields_of(r))

    return evaluate


def build(opts: DittoOptions, env: Env) -> FedAvg:
    """FedAvg's server half with Ditto's client half (functions, no subclass)."""
    return FedAvg(env, name="ditto", update=ditto_update(env, opts.lam),
                  evaluate=ditto_evaluate(env))


registry.register(
    "ditto", lambda opts, env: build(opts, env), DittoOptions,
    "Ditto: FedAvg global model + a personal model per client, proximal term (λ/2)||v-w||²",
    capabilities=AVERAGING,
)
