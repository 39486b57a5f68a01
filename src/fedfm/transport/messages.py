"""Typed messages between server and clients, and their wire format.

A `ClientTask` goes down (server -> one client), a `ClientUpdate` comes up. Both are frozen
dataclasses of named tensors plus JSON scalars. On the wire a message is one safetensors blob
whose `__metadata__["fedfm"]` holds the JSON part — never pickle. `bytes_up`/`bytes_down` are
the exact lengths of these blobs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.core.errors import PayloadError
from fedfm.transport import wire
from fedfm.transport.compress import compress, decompress

Tensors = Mapping[str, torch.Tensor]
Schema = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass(frozen=True)
class ClientTask:
    """What the server sends one client for one round (training or evaluation)."""

    round: int
    client_id: int
    tensors: Tensors = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)  # wire form of a typed payload
    kind: str = "train"  # "train" | "evaluate"

    def read(self, cls: type[P]) -> P:
        """The task's typed payload (PayloadError if the config does not match `cls`)."""
        return read_payload(cls, self.config, "task config")


@dataclass(frozen=True)
class ClientUpdate:
    """What one client returns: trained tensors, example count, JSON metrics."""

    round: int
    client_id: int
    num_examples: int
    tensors: Tensors = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # wire form of typed payloads

    def read(self, cls: type[P]) -> P:
        """A typed view of the metrics (PayloadError if they do not match `cls`)."""
        return read_payload(cls, self.metrics, "update metrics")


# ---- typed payloads: frozen dataclasses inside, string keys only here -------------------
P = TypeVar("P")


def fields_of(*payloads: Any, **extra: Any) -> dict[str, Any]:
    """Typed payloads (frozen dataclasses of JSON scalars, tuples and lists) -> their wire form:
    one string-keyed dict, fields in declaration order (tuples become lists; an optional field
    left at its default None is absent)."""
    out: dict[str, Any] = {}
    for payload in payloads:
        for f in dataclasses.fields(payload):
            v = getattr(payload, f.name)
            if v is None and f.default is None:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return {**out, **extra}


def _conforms(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin in (tuple, list):
        return isinstance(value, (list, tuple)) and all(_conforms(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def read_payload(cls: type[P], mapping: Mapping[str, Any], what: str = "payload") -> P:
    """Wire form -> typed payload: every field without a default must be present, every value
    of its declared type (lists become tuples where declared); other keys are ignored."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PayloadError(f"{what} lacks '{f.name}'")
            continue
        v = mapping[f.name]
        if not _conforms(v, hints[f.name]):
            raise PayloadError(f"{what}: '{f.name}' = {v!r:.40} is not {hints[f.name]}")
        kwargs[f.name] = tuple(v) if typing.get_origin(hints[f.name]) is tuple else v
    return cls(**kwargs)


@dataclass(frozen=True)
class TrainReport:
    """What every training reply reports: the mean local training loss (the round row's
    `train_loss` is its mean over the accepted updates)."""

    loss: float | None = None


@dataclass(frozen=True)
class EvalResult:
    """What every evaluation reply carries (the runner's personalised accuracy reads it):
    correct answers of `total` test examples, and for task = generate the mean
    response-token loss."""

    correct: int
    total: int
    loss: float | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)


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
    """Parse a safetensors header without touching tensor data (local files: checkpoints,
    caches). Peer payloads go through `decode`, which checks the whole layout (fedfm.transport.wire)."""
    if len(blob) < 8:
        raise PayloadError(f"payload of {len(blob)} bytes is too short to be safetensors")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8 or n > wire.MAX_HEADER_BYTES:
        raise PayloadError(f"payload header length {n} exceeds the payload ({len(blob)} bytes)")
    header = wire.loads(blob[8 : 8 + n], "payload header")
    if not isinstance(header, dict):
        raise PayloadError("payload header is not a JSON object")
    return header


def decode(blob: bytes, max_bytes: int | None = None,
           expected: Schema | None = None) -> ClientTask | ClientUpdate:
    """Bytes -> message, or PayloadError naming the reason (never another exception).

    Order: size cap; header layout and fedfm metadata types (fedfm.transport.wire.parse_blob); codec
    tables; if `expected` ({key: (shape, dtype)}) is given, keys/shapes/dtypes against it; the
    decoded size; only then are tensors materialised and expanded (bf16/int8 -> fp32), so every
    allocation is bounded by shapes that were declared and checked first.
    """
    if max_bytes is not None and len(blob) > max_bytes:
        raise PayloadError(f"payload of {len(blob)} bytes exceeds the cap of {max_bytes} bytes")
    specs, meta = wire.parse_blob(bytes(blob))
    fields = _fields(meta)
    restored = wire.check_codec(meta.get("codec"), specs)
    if expected is not None:
        wire.check_expected(specs, restored, expected)
    limit = 8 * len(blob) if max_bytes is None else 8 * max_bytes
    if wire.decoded_bytes(specs, restored) > limit:
        raise PayloadError("payload would expand beyond 8x its size when decoded")
    try:
        tensors = st_load(bytes(blob))
    except Exception as e:  # safetensors raises its own SafetensorError
        raise PayloadError(f"payload tensors are corrupt: {str(e)[:200]}") from None
    tensors = decompress(tensors, meta.get("codec"))
    if fields["type"] == "task":
        return ClientTask(fields["round"], fields["client_id"], tensors, fields["config"],
                          fields["kind"])
    return ClientUpdate(fields["round"], fields["client_id"], fields["num_examples"], tensors,
                        fields["metrics"])


MAX_ID = 2**31 - 1
KINDS = ("train", "evaluate")


def _int_field(meta: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if not (isinstance(v, int) and not isinstance(v, bool)) or not lo <= v <= hi:
        raise PayloadError(f"payload metadata is malformed: '{key}' must be an integer in "
                           f"[{lo}, {hi}], got {v!r:.40}")
    return v


def _metric_ok(v: Any) -> bool:
    """A JSON scalar, or a (nested) list of numbers (depth is bounded by fedfm.transport.wire)."""
    if v is None or isinstance(v, (bool, str, float)):
        return True
    if isinstance(v, int):
        return abs(v) < 2**63
    return isinstance(v, list) and all(
        not isinstance(x, (str, bool, dict)) and x is not None and _metric_ok(x) for x in v)


def _fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The typed fields of a message's fedfm metadata (PayloadError on any type mismatch)."""
    kind = meta.get("type")
    if kind not in ("task", "update"):
        raise PayloadError("payload carries no fedfm metadata (type must be task or update)")
    out = {"type": kind, "round": _int_field(meta, "round", 0, MAX_ID),
           "client_id": _int_field(meta, "client_id", 0, MAX_ID)}
    if kind == "task":
        config, task_kind = meta.get("config", {}), meta.get("kind", "train")
        if not isinstance(config, dict) or task_kind not in KINDS:
            raise PayloadError("payload metadata is malformed: a task needs a config object "
                               f"and kind in {KINDS}")
        return {**out, "config": config, "kind": task_kind}
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict) or not all(_metric_ok(v) for v in metrics.values()):
        raise PayloadError("payload metadata is malformed: metrics must be an object of "
                           "numbers, strings, booleans or (nested) lists of numbers")
    return {**out, "num_examples": _int_field(meta, "num_examples", -(2**63), 2**63 - 1),
            "metrics": metrics}


def payload_bytes(tensors: Tensors) -> int:
    """Bytes of the tensor data alone (no header), e.g. to report LoRA size."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def finite_metrics(metrics: Mapping[str, Any]) -> bool:
    """No NaN/inf among the metric values (nested lists included)."""
    stack = list(metrics.values())
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):
            return False
    return True
