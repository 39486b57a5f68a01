"""Typed messages between server and clients, and their wire format.

A `ClientTask` goes down (server -> one client), a `ClientUpdate` comes up. Both are frozen
dataclasses of named tensors plus JSON scalars. On the wire a message is one safetensors blob
whose `__metadata__["fedfm"]` holds the JSON part — never pickle. `bytes_up`/`bytes_down` are
the exact lengths of these blobs.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.comm import compress, decompress
from fedfm.errors import PayloadError

Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ClientTask:
    """What the server sends one client for one round (training or evaluation)."""

    round: int
    client_id: int
    tensors: Tensors = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "train"  # "train" | "evaluate"


@dataclass(frozen=True)
class ClientUpdate:
    """What one client returns: trained tensors, example count, JSON metrics."""

    round: int
    client_id: int
    num_examples: int
    tensors: Tensors = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)


def _blob(tensors: Tensors, meta: dict[str, Any]) -> bytes:
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        text = json.dumps(meta, allow_nan=False)
    except ValueError as e:
        raise PayloadError(f"message metadata is not finite JSON: {e}") from None
    return st_save(clean, metadata={"fedfm": text})


def encode(msg: ClientTask | ClientUpdate, dtype: str = "fp32") -> bytes:
    """Message -> bytes; `dtype` (comm.dtype: fp32 | bf16 | int8) compresses the tensors."""
    if isinstance(msg, ClientTask):
        meta = {"type": "task", "round": msg.round, "client_id": msg.client_id,
                "kind": msg.kind, "config": dict(msg.config)}
    else:
        meta = {"type": "update", "round": msg.round, "client_id": msg.client_id,
                "num_examples": msg.num_examples, "metrics": dict(msg.metrics)}
    tensors, codec = compress(msg.tensors, dtype)
    if codec is not None:
        meta["codec"] = codec
    return _blob(tensors, meta)


def read_header(blob: bytes) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header without touching tensor data."""
    if len(blob) < 8:
        raise PayloadError(f"payload of {len(blob)} bytes is too short to be safetensors")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8 or n > 100_000_000:
        raise PayloadError(f"payload header length {n} exceeds the payload ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError("payload header is not JSON (not a safetensors blob)") from None
    if not isinstance(header, dict):
        raise PayloadError("payload header is not a JSON object")
    return header


def decode(blob: bytes, max_bytes: int | None = None) -> ClientTask | ClientUpdate:
    """Bytes -> message. Checks the size cap first, then the header, then the tensors."""
    if max_bytes is not None and len(blob) > max_bytes:
        raise PayloadError(f"payload of {len(blob)} bytes exceeds the cap of {max_bytes} bytes")
    header = read_header(blob)
    try:
        meta = json.loads(header.get("__metadata__", {}).get("fedfm", "null"))
    except (AttributeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("type") not in ("task", "update"):
        raise PayloadError("payload carries no fedfm metadata")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise PayloadError(f"payload tensors are corrupt: {e}") from None
    tensors = decompress(tensors, meta.get("codec"))
    try:
        if meta["type"] == "task":
            return ClientTask(int(meta["round"]), int(meta["client_id"]), tensors,
                              dict(meta.get("config", {})), str(meta.get("kind", "train")))
        return ClientUpdate(int(meta["round"]), int(meta["client_id"]), int(meta["num_examples"]),
                            tensors, dict(meta.get("metrics", {})))
    except (KeyError, TypeError, ValueError) as e:
        raise PayloadError(f"payload metadata is malformed: {e}") from None


def payload_bytes(tensors: Tensors) -> int:
    """Bytes of the tensor data alone (no header), e.g. to report LoRA size."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def finite_metrics(metrics: Mapping[str, Any]) -> bool:
    return all(not (isinstance(v, float) and not math.isfinite(v)) for v in metrics.values())
