"""Clients' private memory, kept between rounds by the runtime (never sent anywhere).

With a RAM budget B (`[sim] memory_budget_mb`), the store keeps the most recently used clients'
tensors in RAM while Σ_k bytes(memory_k) <= B; beyond it, the least recently used clients'
tensors are written to one safetensors file each and read back memory-mapped (copy-on-write,
`torch.from_file(shared=False)`): a spilled client costs page cache, not process
RAM, until its tensors are touched. JSON-like `state` always stays in RAM (it is small).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import weakref
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

from fedfm.algorithms.base import ClientMemory
from fedfm.core.errors import PayloadError

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def mmap_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file as views of one private memory map (no copy)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    # shared=False: a lazy MAP_PRIVATE map; writes to a view never reach the file
    buf = torch.from_file(str(path), shared=False, size=os.path.getsize(path), dtype=torch.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise PayloadError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        start, end = (8 + n + o for o in info["data_offsets"])
        raw = buf[start:end]
        dtype = _DTYPES[info["dtype"]]
        if start % torch.empty(0, dtype=dtype).element_size():
            raw = raw.clone()  # unaligned: copy (safetensors aligns, so this is rare)
        out[name] = raw.view(dtype).view(info["shape"])
    return out


def pack(tensors: dict[str, torch.Tensor], align: int = 64) -> dict[str, torch.Tensor]:
    """The same tensors, copied into ONE contiguous buffer (returned as views of it, same names).

    One allocation per client instead of one per tensor: many small tensors allocated between a
    training step's temporaries fragment the heap (measured: 1.25x the private bytes per added
    client unpacked, see bench/reports/performance.md)."""
    from fedfm.core.device import current

    layout, total, out = [], 0, {}
    for name, t in tensors.items():
        if t.device.type != "cpu":  # e.g. a SAL prefix cache kept on the GPU: left in place
            out[name] = t
            continue
        layout.append((name, t, total))
        total += -(-t.numel() * t.element_size() // align) * align
    buf = torch.empty(total, dtype=torch.uint8, pin_memory=current().cuda)  # pinned on CUDA
    for name, t, start in layout:
        view = buf[start : start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        out[name] = view.copy_(t.detach())
    return {name: out[name] for name in tensors}


class ClientStore:
    """client id -> ClientMemory; RAM up to `memory_budget_mb`, then LRU clients spill to disk."""

    def __init__(self, memory_budget_mb: float | None = None, spill_dir: str | None = None):
        self.budget = None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
        self._ram: OrderedDict[int, ClientMemory] = OrderedDict()  # least recently used first
        self._disk: dict[int, tuple[Path, dict]] = {}  # cid -> (file, state)
        self._ram_bytes = 0
        self._disk_bytes: dict[int, int] = {}
        self._spill_dir, self._dir = spill_dir, None
        self.spills = 0

    @classmethod
    def from_config(cls, sim) -> ClientStore:
        return cls(sim.memory_budget_mb, sim.spill_dir)

    def get(self, cid: int) -> ClientMemory:
        if cid in self._ram:
            self._ram.move_to_end(cid)
            return self._ram[cid]
        if cid in self._disk:
            path, state = self._disk[cid]
            return ClientMemory(mmap_safetensors(path), state)
        return ClientMemory()

    def put(self, cid: int, memory: ClientMemory) -> None:
        if not (memory.tensors or memory.state):
            return
        if cid in self._ram:
            self._ram_bytes -= self._ram.pop(cid).nbytes()
        memory.tensors = pack(memory.tensors)
        self._ram[cid] = memory
        self._ram_bytes += memory.nbytes()
        self._evict()

    def _evict(self) -> None:
        """Spill least recently used clients until the RAM part fits the budget."""
        while self.budget is not None and self._ram_bytes > self.budget and self._ram:
            cid, memory = self._ram.popitem(last=False)
            self._ram_bytes -= memory.nbytes()
            self._spill(cid, memory)

    def _spill(self, cid: int, memory: ClientMemory) -> None:
        path = self._folder() / f"client_{cid}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().clone() for k, v in memory.tensors.items()}, str(tmp))
        os.replace(tmp, path)  # old maps of this client keep the old (unlinked) file alive
        self._disk[cid] = (path, memory.state)
        self._disk_bytes[cid] = memory.nbytes()
        self.spills += 1

    def _folder(self) -> Path:
        if self._dir is None:
            if self._spill_dir:
                self._dir = Path(self._spill_dir)
                self._dir.mkdir(parents=True, exist_ok=True)
            else:
                self._dir = Path(tempfile.mkdtemp(prefix="fedfm-spill-"))
                weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        return self._dir

    def items(self):
        """(cid, memory) of every client, RAM and spilled (e.g. for checkpoints)."""
        for cid in sorted(set(self._ram) | set(self._disk)):
            yield cid, self._ram[cid] if cid in self._ram else self.get(cid)

    def nbytes(self) -> int:
        """Bytes of all clients' private tensors (RAM + disk)."""
        on_disk = sum(b for cid, b in self._disk_bytes.items() if cid not in self._ram)
        return self._ram_bytes + on_disk

    def ram_bytes(self) -> int:
        return self._ram_bytes

    def stats(self) -> dict[str, float | int | None]:
        """Logged in summary.json."""
        return {"memory_budget_mb": None if self.budget is None else self.budget / 2**20,
                "client_memory_mb": round(self.nbytes() / 2**20, 3),
                "client_memory_ram_mb": round(self._ram_bytes / 2**20, 3),
                "clients_on_disk": sum(1 for c in self._disk if c not in self._ram),
                "spills": self.spills}
