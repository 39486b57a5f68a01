"""FedPer (Arivazhagan et al. 2019): shared body, personal head.

The body's trainable tensors (LoRA, or the full body) are FedAvg-ed; each client's classification
head stays in its private memory and never leaves it. Personalised accuracy = global body + own
head; there is no global model (acc_global is null). For task = generate (no classification
head) the personal part is the model's `is_personal`: the LoRA of the last block.

FedAvg's parts + a personal head: `FedAvg(env, adapter=personal_head, global_model=False)`
(fedfm.algorithms.adapter), no subclass.
"""

from __future__ import annotations

from fedfm.algorithms import registry
from fedfm.algorithms.adapter import personal_head
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.env import Env
from fedfm.algorithms.fedavg import FedAvg


def build(env: Env) -> FedAvg:
    return FedAvg(env, name="fedper", adapter=personal_head, global_model=False)


registry.register("fedper", lambda opts, env: build(env), None,
                  "FedPer: FedAvg body (LoRA), personal classification head kept on the client",
                  capabilities=AVERAGING, tasks=("classify", "generate"), multitask=True)
