"""fedfm messages <-> Flower records. String keys live here and nowhere else.

A fedfm message on Flower is the very blob the embedded runtime sends (messages.encode:
safetensors + JSON, compressed per comm.dtype), carried as one byte Array so that Flower chunks
large payloads. bytes_up/bytes_down are therefore identical on both runtimes, and the receiver
validates the same bytes (fedfm.transport.validation) before decoding anything.

  RecordDict { "fedfm": ArrayRecord { "blob": Array(uint8, (n,), stype="fedfm/safetensors") },
               "fedfm.info": ConfigRecord { "compute_s": float, ... } }

A client's private memory (ClientMemory) lives in `context.state` the same way: one safetensors
blob whose metadata holds the JSON `state`; it never leaves the node.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.algorithms.base import ClientMemory
from fedfm.core.errors import PayloadError
from fedfm.transport.messages import read_header

STYPE = "fedfm/safetensors"
PAYLOAD, INFO, BLOB = "fedfm", "fedfm.info", "blob"
MEMORY, NODE = "fedfm.memory", "fedfm.node"


def _bytes_array(blob: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(blob),), stype=STYPE, data=bytes(blob))


def _bytes_of(record: RecordDict, key: str, what: str) -> bytes:
    arrays = record.array_records.get(key)
    if arrays is None or BLOB not in arrays:
        raise PayloadError(f"Flower {what} carries no fedfm payload (record '{key}' missing)")
    arr = arrays[BLOB]
    if arr.stype != STYPE:
        raise PayloadError(f"Flower {what}: payload stype '{arr.stype}' is not '{STYPE}'")
    return bytes(arr.data)


def to_content(blob: bytes, info: dict[str, Any] | None = None) -> RecordDict:
    """A fedfm wire blob (+ small JSON-able facts such as compute time) -> message content."""
    content = RecordDict({PAYLOAD: ArrayRecord({BLOB: _bytes_array(blob)})})
    if info:
        content[INFO] = ConfigRecord(dict(info))
    return content


def blob_of(content: RecordDict) -> bytes:
    """Message content -> the fedfm wire blob (decode/validate it with fedfm.transport.messages)."""
    return _bytes_of(content, PAYLOAD, "message")


def info_of(content: RecordDict) -> dict[str, Any]:
    rec = content.config_records.get(INFO)
    return dict(rec) if rec is not None else {}


def node_content(partition_id: object) -> RecordDict:
    """A `query` reply: which fedfm client this node serves (-1 = none configured)."""
    return RecordDict({NODE: ConfigRecord({"partition-id": partition_id})})


def partition_of(content: RecordDict) -> int | None:
    rec = content.config_records.get(NODE)
    pid = rec.get("partition-id") if rec is not None else None
    return pid if isinstance(pid, int) else None


def save_memory(state: RecordDict, memory: ClientMemory, key: str = MEMORY) -> None:
    """Keep a client's private memory in its node's `context.state` (safetensors + JSON)."""
    if not (memory.tensors or memory.state):
        return
    tensors, seen = {}, set()
    for k, v in memory.tensors.items():
        v = v.detach().contiguous().cpu()
        ptr = v.untyped_storage().data_ptr()
        tensors[k] = v.clone() if ptr in seen else v  # safetensors refuses shared storage
        seen.add(ptr)
    try:
        meta = json.dumps(memory.state, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PayloadError(f"client memory state is not JSON: {e}") from None
    state[key] = ArrayRecord({BLOB: _bytes_array(st_save(tensors, metadata={"state": meta}))})


def load_memory(state: RecordDict, key: str = MEMORY) -> ClientMemory:
    """The client's memory from `context.state` (empty on its first round)."""
    if key not in state.array_records:
        return ClientMemory()
    blob = _bytes_of(state, key, "context.state")
    meta = (read_header(blob).get("__metadata__") or {}).get("state", "{}")
    return ClientMemory(dict(st_load(blob)), json.loads(meta))
