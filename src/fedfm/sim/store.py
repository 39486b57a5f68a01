"""Clients' private memory, kept between rounds by the runtime (never sent anywhere)."""

from __future__ import annotations

from fedfm.algorithms.base import ClientMemory


class ClientStore:
    """In-RAM store: client id -> ClientMemory."""

    def __init__(self) -> None:
        self._mem: dict[int, ClientMemory] = {}

    def get(self, cid: int) -> ClientMemory:
        return self._mem.get(cid) or ClientMemory()

    def put(self, cid: int, memory: ClientMemory) -> None:
        if memory.tensors or memory.state:
            self._mem[cid] = memory

    def items(self):
        return self._mem.items()

    def nbytes(self) -> int:
        return sum(m.nbytes() for m in self._mem.values())
