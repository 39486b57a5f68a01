"""FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning",
ICLR 2025): share A, keep B local.

The paper's observation: in LoRA `ΔW = B A` the A matrices learn general knowledge (they end up
similar across clients) and the B matrices client-specific knowledge. So only A is aggregated:

    server:  A_p ← Σ_k n_k A_p,k / Σ_k n_k            for every LoRA pair p, over the senders
    client:  load the global A's + its own B's (B = 0 the first time: the shared LoRA init),
             train (A, B, head) on CE for the local epochs, upload the A's only.

Personalised model of client k = frozen FM + Σ_p B_p,k A_p + its head. B never leaves the client
(`expected_update` declares the A's only; a test checks every upload).
Head (a choice the paper, which fine-tunes a GLUE classifier with its LoRA, does not isolate):
`head = "local"` (default: the head is client-specific like B) or `"shared"` (FedAvg-ed with A).
There is no single global model (acc_global is null): the global A's alone give B = 0.
[aggregation] / [dp] apply to the uploaded tensors (the A's, + the head when shared).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from fedfm.algorithms import registry
from fedfm.algorithms.aggregation import aggregate_updates
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.fedavg import evaluate_on, prepare, train_on
from fedfm.core.errors import ConfigError
from fedfm.core.schema import RunConfig
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier, get_tensors, set_tensors
from fedfm.transport.messages import ClientTask, ClientUpdate

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FedSAOptions:
    head: str = "local"  # local | shared

    def check(self) -> None:
        if self.head not in ("local", "shared"):
            raise ConfigError(f"fedsa.head must be local or shared, not '{self.head}'.")


class FedSA:
    has_global_model = False

    def __init__(self, cfg: RunConfig, opts: FedSAOptions):
        self.cfg, self.opts, self.name = cfg, opts, "fedsa"
        self.init: Tensors = {}
        self.global_: Tensors = {}

    def shared(self, name: str) -> bool:
        """Whether a trainable tensor is aggregated: the A's (+ the head when shared)."""
        return name.endswith(".lora_A") or (self.opts.head == "shared" and
                                            name.startswith("head."))

    def prepare_model(self, model: Classifier) -> None:
        prepare(model, self.cfg)
        self.init = get_tensors(model)  # seeded: identical in every process

    def init_server(self, model: Classifier) -> None:
        self.global_ = {k: v for k, v in self.init.items() if self.shared(k)}

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(rnd, c, self.global_) for c in clients]

    def expected_update(self, task: ClientTask) -> dict[str, tuple[tuple[int, ...], Any]]:
        return {k: (tuple(v.shape), v.dtype) for k, v in self.global_.items()}

    def _load(self, model: Classifier, task: ClientTask, memory: ClientMemory) -> None:
        """Shared tensors from the task, private ones (B, maybe the head) from memory."""
        private = {k: v for k, v in self.init.items() if not self.shared(k)}
        set_tensors(model, {**private, **memory.tensors, **dict(task.tensors)})

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        self._load(model, task, memory)
        loss = train_on(model, data, self.cfg, ctx)
        trained = get_tensors(model)
        memory.tensors = {k: v for k, v in trained.items() if not self.shared(k)}
        out = {k: v for k, v in trained.items() if self.shared(k)}
        return ClientUpdate(task.round, task.client_id, len(data.train), out, {"loss": loss})

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        if not updates:
            return {}
        self.global_, extras = aggregate_updates(self.cfg, rnd, updates, self.global_)
        return extras

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(rnd, c, self.global_, kind="evaluate") for c in clients]

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        """Global A's + the client's own B's (B = 0 for a client never sampled yet)."""
        self._load(model, task, memory)
        correct, total = evaluate_on(model, data.test, self.cfg)
        return ClientUpdate(task.round, task.client_id, total, {},
                            {"correct": correct, "total": total})

    def evaluate_global(self, model: Classifier, split: Split) -> float | None:
        return None

    def global_tensors(self) -> Tensors:
        return dict(self.global_)

    def server_state(self) -> tuple[Tensors, dict[str, Any]]:
        return dict(self.global_), {}

    def load_server_state(self, tensors: Tensors, state: dict[str, Any]) -> None:
        self.global_ = dict(tensors)


registry.register(
    "fedsa", lambda cfg, opts, nl, nc: FedSA(cfg, opts), FedSAOptions,
    "FedSA-LoRA: LoRA A matrices FedAvg-ed, B matrices (and the head) kept on each client",
    capabilities=replace(AVERAGING, finetune=("lora",),
                         why="it shares LoRA A matrices and keeps B; fedavg-ft and ditto "
                             "personalise full or head fine-tuning"),
)
