"""The server state every algorithm with one dict of global tensors has, written once.

    global_tensors()        what a runtime may export / report: θ_global
    server_state()          (tensors, JSON state) for the checkpoint (fedfm.sim.checkpoint)
    load_server_state(...)  the inverse, on resume

An algorithm keeping more than `global_` (HetLoRA's pruned ranks) extends `server_state` /
`load_server_state` through `extra_state` / `load_extra_state`.
"""

from __future__ import annotations

from typing import Any

import torch

Tensors = dict[str, torch.Tensor]


class ServerState:
    """Checkpointing of `self.global_` (+ optional JSON `extra_state`)."""

    global_: Tensors

    def global_tensors(self) -> Tensors:
        return dict(self.global_)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def server_state(self) -> tuple[Tensors, dict[str, Any]]:
        return dict(self.global_), self.extra_state()

    def load_server_state(self, tensors: Tensors, state: dict[str, Any]) -> None:
        self.global_ = dict(tensors)
        self.load_extra_state(state)
