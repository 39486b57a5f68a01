"""The seam between algorithms and runtimes.

An algorithm is one object owning both halves of a federated method:

server half                      client half (pure: may only use its arguments)
-----------                      -----------
init_server(model)               client_update(task, model, data, memory, ctx) -> ClientUpdate
configure_train(rnd, clients)    client_evaluate(task, model, data, memory, ctx) -> ClientUpdate
upload_schema(task)
aggregate_train(rnd, updates)
configure_evaluate(rnd, clients)
evaluate_global(model, split)

`upload_schema(task)` = {key: (shape, dtype)} the client must send back: read from the
algorithm's one declaration of what trains and travels (fedfm.algorithms.adapter), it is what
validation checks every upload against and what the server averages.

The embedded simulator and the Flower adapter drive the same object. Each process builds the
algorithm from its options and the world's flat handles (registry row: `factory(options, env)`,
fedfm.algorithms.env; never the RunConfig) and calls `prepare_model` on its own copy of the
model, so that e.g. LoRA is injected identically everywhere. The model passed to the client half is shared
between clients (one frozen backbone): a client must set every tensor its forward pass uses,
from the task or from its `memory` (state that never leaves the client).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fedfm.core.schema import RunConfig
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier
from fedfm.transport.messages import ClientTask, ClientUpdate


@dataclass
class ClientMemory:
    """A client's private state, kept by the runtime between rounds, never sent."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass(frozen=True)
class ClientContext:
    """Per-call facts a client update needs: its seed (from (run seed, round, client))."""

    seed: int
    round: int
    client_id: int

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


class Algorithm(Protocol):
    name: str
    has_global_model: bool

    def prepare_model(self, model: Classifier) -> None: ...

    def init_server(self, model: Classifier) -> None: ...

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]: ...

    def upload_schema(self, task: ClientTask) -> dict[str, tuple[tuple[int, ...], torch.dtype]]: ...

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate: ...

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]: ...

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]: ...

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate: ...

    def evaluate_global(self, model: Classifier, split: Split) -> float | None: ...

    def global_tensors(self) -> dict[str, torch.Tensor]: ...

    def server_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def load_server_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None: ...


def build_algorithm(cfg: RunConfig, num_labels: int, num_clients: int) -> Algorithm:
    from fedfm.algorithms import registry

    return registry.build(cfg, num_labels, num_clients)
