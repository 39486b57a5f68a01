"""How a runner reaches its clients: one `Exchange` per task, in task order.

A runner (the embedded loop in sim/runner.py) only sees exchanges: the task as the client
decoded it, the reply's raw bytes as they reached the server (validate them before decoding:
fedfm.transport.validation.validate_update), the exact bytes each way and the client's compute time. Where the client half runs is the transport's business:

  LocalClients    in this process, sequentially, memory in a ClientStore (the embedded runtime)
  FlowerClients   on Flower SuperNodes, one message per client (fedfm.flower.server)

Both run the same client half with the same `client_context` seeds, so a run's numbers do not
depend on the transport.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.training import lr_scale, round_lr_factor
from fedfm.core.errors import PayloadError
from fedfm.core.seeds import derive_seed
from fedfm.sim.store import ClientStore
from fedfm.transport.messages import ClientTask, ClientUpdate, decode, encode

TRAIN, EVALUATE = 1, 2  # the phase part of a client's seed: derive_seed(seed, round, client, phase)


@dataclass
class Exchange:
    task: ClientTask      # as the client received it (after encode/decode)
    reply_blob: bytes     # the client's encoded reply, as the server received it
    bytes_down: int
    compute_s: float      # wall time of client_update / client_evaluate alone

    @property
    def bytes_up(self) -> int:
        return len(self.reply_blob)

    @cached_property
    def reply(self) -> ClientUpdate:
        """The decoded reply (PayloadError if the bytes are not a fedfm message)."""
        msg = decode(self.reply_blob)
        if not isinstance(msg, ClientUpdate):
            raise PayloadError(f"client {self.task.client_id} answered with a task, not an update")
        return msg


class Clients(Protocol):
    def exchange(self, tasks: list[ClientTask], rnd: int, phase: int) -> Iterator[Exchange]: ...


def client_context(seed: int, rnd: int, cid: int, phase: int) -> ClientContext:
    return ClientContext(derive_seed(seed, rnd, cid, phase), rnd, cid)


def roundtrip(msg: ClientTask | ClientUpdate, dtype: str = "fp32") -> tuple[Any, int]:
    """encode -> decode (the transport edge; `dtype` = comm.dtype); returns (message, bytes)."""
    blob = encode(msg, dtype)
    return decode(blob), len(blob)


def run_client(world, task: ClientTask, memory: ClientMemory, phase: int) -> tuple[ClientUpdate, float]:
    """The client half for one decoded task; returns (reply, compute seconds)."""
    algo, cid = world.algorithm, task.client_id
    fn = algo.client_update if phase == TRAIN else algo.client_evaluate
    ctx = client_context(world.cfg.seed, task.round, cid, phase)
    factor = round_lr_factor(world.cfg.train, task.round, world.cfg.rounds)  # lr schedule
    t0 = time.perf_counter()
    with lr_scale(factor):
        reply = fn(task, world.model, world.data.clients[cid], memory, ctx)
    return reply, time.perf_counter() - t0


class LocalClients:
    """Every client in this process, one after another; every message crosses encode/decode."""

    def __init__(self, world, store: ClientStore, dtype: str = "fp32"):
        self.world, self.store, self.dtype = world, store, dtype

    def exchange(self, tasks: list[ClientTask], rnd: int, phase: int) -> Iterator[Exchange]:
        for task in tasks:
            task, n_down = roundtrip(task, self.dtype)
            memory = self.store.get(task.client_id)
            reply, secs = run_client(self.world, task, memory, phase)
            if phase == TRAIN:
                self.store.put(task.client_id, memory)
            yield Exchange(task, encode(reply, self.dtype), n_down, secs)
