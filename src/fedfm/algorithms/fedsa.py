"""FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning",
ICLR 2025): share A, keep B local.

The paper's observation: in LoRA `ΔW = B A` the A matrices learn general knowledge (they end up
similar across clients) and the B matrices client-specific knowledge. So only A is aggregated:

    server:  A_p ← Σ_k n_k A_p,k / Σ_k n_k            for every LoRA pair p, over the senders
    client:  load the global A's + its own B's (B = 0 the first time: the shared LoRA init),
             train (A, B, head) on CE for the local epochs, upload the A's only.

Personalised model of client k = frozen FM + Σ_p B_p,k A_p + its head. B never leaves the client
(its `Adapter` declares everything but the A's private; a test checks every upload).
Head (a choice the paper, which fine-tunes a GLUE classifier with its LoRA, does not isolate):
`head = "local"` (default: the head is client-specific like B) or `"shared"` (FedAvg-ed with A).
There is no single global model (acc_global is null): the global A's alone give B = 0.
[aggregation] / [dp] apply to the uploaded tensors (the A's, + the head when shared).
FedAvg's parts + that declaration: `FedAvg(env, adapter=..., global_model=False)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedfm.algorithms import registry
from fedfm.algorithms.adapter import Adapter, is_head
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.env import Env
from fedfm.algorithms.fedavg import FedAvg
from fedfm.core.errors import ConfigError


@dataclass(frozen=True)
class FedSAOptions:
    head: str = "local"  # local | shared

    def check(self) -> None:
        if self.head not in ("local", "shared"):
            raise ConfigError(f"fedsa.head must be local or shared, not '{self.head}'.")


def adapter(opts: FedSAOptions) -> Adapter:
    """Aggregated: the A's (+ the head when shared); private: the B's (and the local head)."""
    def private(name: str) -> bool:
        return not (name.endswith(".lora_A") or (opts.head == "shared" and is_head(name)))

    return Adapter(private)


def build(opts: FedSAOptions, env: Env) -> FedAvg:
    declared = adapter(opts)
    return FedAvg(env, name="fedsa", adapter=lambda model: declared, global_model=False)


registry.register(
    "fedsa", lambda opts, env: build(opts, env), FedSAOptions,
    "FedSA-LoRA: LoRA A matrices FedAvg-ed, B matrices (and the head) kept on each client",
    capabilities=replace(AVERAGING, finetune=("lora",),
                         why="it shares LoRA A matrices and keeps B; fedavg-ft and ditto "
                             "personalise full or head fine-tuning"),
)
