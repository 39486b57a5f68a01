"""Local-only training: every client trains its own LoRA + head on its own data, nothing is
shared. The lower bound a federated method must beat on personalised accuracy; no global model.
"""

from __future__ import annotations

from typing import Any

import torch

from fedfm.algorithms import registry
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import Capabilities
from fedfm.algorithms.fedavg import evaluate_metrics, prepare, train_on
from fedfm.core.schema import RunConfig
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier, get_tensors, set_tensors
from fedfm.transport.messages import ClientTask, ClientUpdate


class LocalOnly:
    has_global_model = False

    def __init__(self, cfg: RunConfig):
        self.cfg, self.name = cfg, "local"
        self.init: dict[str, torch.Tensor] = {}

    def prepare_model(self, model: Classifier) -> None:
        prepare(model, self.cfg)
        self.init = get_tensors(model)  # the same in every process: seeded by the run seed

    def init_server(self, model: Classifier) -> None:
        pass

    def _load(self, model: Classifier, memory: ClientMemory) -> None:
        set_tensors(model, memory.tensors or self.init)

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(rnd, c) for c in clients]

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        self._load(model, memory)
        loss = train_on(model, data, self.cfg, ctx)
        memory.tensors = get_tensors(model)
        return ClientUpdate(task.round, task.client_id, len(data.train), {}, {"loss": loss})

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        return {}

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(rnd, c, kind="evaluate") for c in clients]

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        self._load(model, memory)
        m = evaluate_metrics(model, data.test, self.cfg)
        return ClientUpdate(task.round, task.client_id, m["total"], {}, m)

    def evaluate_global(self, model: Classifier, split: Split) -> float | None:
        return None

    def global_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def server_state(self):
        return {}, {}

    def load_server_state(self, tensors, state) -> None:
        pass


registry.register("local", lambda cfg, opts, nl, nc: LocalOnly(cfg), None,
                  "local-only training (no communication, no global model)",
                  capabilities=Capabilities(why="local trains no shared model: nothing is "
                                                "averaged, so there is nothing to protect"))
