"""FedPer (Arivazhagan et al. 2019): shared body, personal head.

The body's trainable tensors (LoRA, or the full body) are FedAvg-ed; each client's classification
head stays in its private memory and never leaves it. Personalised accuracy = global body + own
head; there is no global model (acc_global is null).
"""

from __future__ import annotations

import torch

from fedfm.algorithms import registry
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.fedavg import FedAvg, evaluate_metrics, train_on
from fedfm.core.schema import RunConfig
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier, get_tensors, set_tensors
from fedfm.transport.messages import ClientTask, ClientUpdate


def _is_head(name: str) -> bool:
    return name.startswith("head.")


def _split(tensors: dict[str, torch.Tensor], personal=_is_head):
    """(shared body, personal part). Personal = the head; for task = generate (no head) the
    model's `is_personal`: the LoRA of the last block (fedfm.models.causal_lm)."""
    body = {k: v for k, v in tensors.items() if not personal(k)}
    head = {k: v for k, v in tensors.items() if personal(k)}
    return body, head


class FedPer(FedAvg):
    has_global_model = False

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg, name="fedper")
        self.init_head: dict[str, torch.Tensor] = {}
        self.personal = _is_head

    def prepare_model(self, model: Classifier) -> None:
        super().prepare_model(model)
        self.personal = getattr(model, "is_personal", _is_head)
        self.init_head = _split(get_tensors(model), self.personal)[1]

    def init_server(self, model: Classifier) -> None:
        self.global_ = _split(get_tensors(model), self.personal)[0]

    def _load(self, model: Classifier, task: ClientTask, memory: ClientMemory) -> None:
        set_tensors(model, dict(task.tensors))
        set_tensors(model, memory.tensors or self.init_head)

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        self._load(model, task, memory)
        loss = train_on(model, data, self.cfg, ctx)
        body, head = _split(get_tensors(model), self.personal)
        memory.tensors = head
        return ClientUpdate(task.round, task.client_id, len(data.train), body, {"loss": loss})

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        self._load(model, task, memory)
        m = evaluate_metrics(model, data.test, self.cfg)
        return ClientUpdate(task.round, task.client_id, m["total"], {}, m)

    def evaluate_global(self, model: Classifier, split: Split) -> float | None:
        return None


registry.register("fedper", lambda cfg, opts, nl, nc: FedPer(cfg), None,
                  "FedPer: FedAvg body (LoRA), personal classification head kept on the client",
                  capabilities=AVERAGING)
