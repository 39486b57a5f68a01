"""Local-only training: every client trains its own LoRA + head on its own data, nothing is
shared. The lower bound a federated method must beat on personalised accuracy; no global model.

FedAvg's parts with every trained tensor private (`KEEP_ALL`): tasks carry no tensors, uploads
are empty, the server averages nothing.
"""

from __future__ import annotations

from fedfm.algorithms import registry
from fedfm.algorithms.adapter import KEEP_ALL
from fedfm.algorithms.capabilities import Capabilities
from fedfm.algorithms.env import Env
from fedfm.algorithms.fedavg import FedAvg


def build(env: Env) -> FedAvg:
    return FedAvg(env, name="local", adapter=lambda model: KEEP_ALL, global_model=False)


registry.register("local", lambda opts, env: build(env), None,
                  "local-only training (no communication, no global model)",
                  capabilities=Capabilities(why="local trains no shared model: nothing is "
                                                "averaged, so there is nothing to protect"),
                  tasks=("classify", "generate"), multitask=True)
