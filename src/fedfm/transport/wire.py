"""Strict checks of a fedfm wire blob before any tensor is materialised.

A blob is safetensors: 8 bytes little-endian n, n bytes of JSON header, then the data buffer D.
`parse_blob` checks, with nothing allocated beyond the header's JSON:
  header   a JSON object (nesting bounded: deep nesting is a PayloadError, not a RecursionError)
  entries  every tensor entry is {dtype ∈ WIRE_DTYPES, shape: ≤ MAX_RANK ints ≥ 0,
           data_offsets: [b, e]} with e - b = ∏shape · itemsize(dtype), and the ranges tile D
           exactly (sorted, no gap, no overlap, end = |D|)
  metadata `__metadata__` is {str: str}; `fedfm` in it is a JSON object of bounded depth
and returns (tensor specs, fedfm metadata). `check_codec` then validates the comm codec's tables
against those specs and bounds the decoded size before anything is expanded:
  decoded bytes = Σ_k ∏shape_k · itemsize(orig dtype_k)  (int8 -> fp32 is 4×, never more than 8×)
so every later allocation is fixed by declared, validated shapes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedfm.core.errors import PayloadError

MAX_HEADER_BYTES = 100_000_000
MAX_RANK = 8
MAX_DEPTH = 32  # nesting of the fedfm JSON metadata (configs are at most a few levels deep)
WIRE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
               "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
               "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
ORIG_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
               "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TensorSpec:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def loads(text: bytes | str, what: str) -> Any:
    """json.loads that turns every failure (syntax, recursion, huge ints) into PayloadError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, int-digit limit
        raise PayloadError(f"{what} is not valid JSON: {str(e)[:120]}") from None


def depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON value, iteratively (no recursion); stops past `limit`."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        node, d = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _spec(name: str, entry: Any) -> tuple[TensorSpec, int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise PayloadError(f"payload tensor '{name:.80}' has a malformed header entry")
    dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise PayloadError(f"payload tensor '{name:.80}' has unsupported dtype {dtype!r:.40}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK \
            or not all(_is_int(d) and d >= 0 for d in shape):
        raise PayloadError(f"payload tensor '{name:.80}' has an invalid shape {shape!r:.80}")
    if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs):
        raise PayloadError(f"payload tensor '{name:.80}' has invalid data_offsets {offs!r:.80}")
    spec = TensorSpec(WIRE_DTYPES[dtype], tuple(shape))
    nbytes = spec.numel * spec.dtype.itemsize
    if offs[1] - offs[0] != nbytes:
        raise PayloadError(f"payload tensor '{name:.80}' declares shape {tuple(shape)} "
                           f"({nbytes} bytes) but data_offsets span {offs[1] - offs[0]} bytes")
    return spec, offs[0], offs[1]


def _metadata(raw: Any) -> dict[str, Any]:
    if raw is None:
        raise PayloadError("payload carries no fedfm metadata")
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise PayloadError("payload __metadata__ is not a table of strings")
    if "fedfm" not in raw:
        raise PayloadError("payload carries no fedfm metadata")
    meta = loads(raw["fedfm"], "payload fedfm metadata")
    if not isinstance(meta, dict):
        raise PayloadError("payload fedfm metadata is not a JSON object")
    if depth(meta) > MAX_DEPTH:
        raise PayloadError(f"payload fedfm metadata is nested deeper than {MAX_DEPTH} levels")
    return meta


def parse_blob(blob: bytes) -> tuple[dict[str, TensorSpec], dict[str, Any]]:
    """(tensor specs, fedfm metadata) of a blob whose layout is fully checked (see module doc)."""
    if len(blob) < 8:
        raise PayloadError(f"payload of {len(blob)} bytes is too short to be safetensors")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8 or n > MAX_HEADER_BYTES:
        raise PayloadError(f"payload header length {n} exceeds the payload ({len(blob)} bytes)")
    header = loads(blob[8: 8 + n], "payload header")
    if not isinstance(header, dict):
        raise PayloadError("payload header is not a JSON object")
    meta = _metadata(header.pop("__metadata__", None))
    data_len = len(blob) - 8 - n
    specs, ranges = {}, []
    for name, entry in header.items():
        spec, b, e = _spec(name, entry)
        specs[name] = spec
        ranges.append((b, e))
    end = 0
    for b, e in sorted(ranges):
        if b != end:
            raise PayloadError("payload data_offsets overlap or leave a gap in the data buffer")
        end = e
    if end != data_len:
        raise PayloadError(f"payload data buffer is {data_len} bytes, tensors declare {end}")
    return specs, meta


def check_codec(codec: Any, specs: Mapping[str, TensorSpec]) -> dict[str, torch.dtype]:
    """Validate comm codec metadata against the wire specs; returns {name: restored dtype}."""
    restored = {k: s.dtype for k, s in specs.items()}
    if codec is None:
        return restored
    kind = codec.get("dtype") if isinstance(codec, dict) else None
    if kind not in ("bf16", "int8"):
        raise PayloadError(f"payload codec metadata is malformed: {codec!r:.200}")
    orig, scales = codec.get("orig"), codec.get("scales", {})
    if not isinstance(orig, dict) or not isinstance(scales, dict):
        raise PayloadError("payload codec metadata lacks its 'orig'/'scales' tables")
    wire = torch.bfloat16 if kind == "bf16" else torch.int8
    seen: set[str] = set()
    for dt, names in orig.items():
        if dt not in ORIG_DTYPES or not isinstance(names, list):
            raise PayloadError(f"payload codec metadata names an unknown dtype {dt!r:.40}")
        for name in names:
            if not isinstance(name, str) or name not in specs or name in seen:
                raise PayloadError(f"payload codec names tensor {name!r:.80} it does not carry")
            if specs[name].dtype != wire:
                raise PayloadError(f"payload tensor '{name:.80}' is {specs[name].dtype}, "
                                   f"expected {wire} ({kind})")
            if kind == "int8":
                _check_scale(name, scales.get(name))
            seen.add(name)
            restored[name] = ORIG_DTYPES[dt]
    return restored


def _check_scale(name: str, scale: Any) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale < 0:
        raise PayloadError(f"payload tensor '{name:.80}' has no valid int8 scale (got {scale!r:.40})")


def decoded_bytes(specs: Mapping[str, TensorSpec], restored: Mapping[str, torch.dtype]) -> int:
    return sum(s.numel * restored[k].itemsize for k, s in specs.items())


class SchemaMismatch(PayloadError):
    """A payload whose keys/shapes/dtypes differ from the receiver's schema (`key`: which)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"tensor '{key:.80}': {reason}")
        self.key, self.reason = key, reason


def schema_mismatch(actual: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
                    ) -> tuple[str, str] | None:
    """(key, reason) of the first difference between two {key: (shape, dtype)} schemas."""
    for key in sorted(set(expected) - set(actual)):
        return key, "missing tensor"
    for key in sorted(set(actual) - set(expected)):
        return key[:200], "unexpected tensor (not assigned to this client)"
    for key in sorted(expected):
        (shape, dtype), (want, want_dt) = actual[key], expected[key]
        if tuple(shape) != tuple(want):
            return key, f"shape {tuple(shape)} != assigned {tuple(want)}"
        if dtype != want_dt:
            return key, f"dtype {dtype} != assigned {want_dt}"
    return None


def check_expected(specs: Mapping[str, TensorSpec], restored: Mapping[str, torch.dtype],
                   expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Keys, shapes and restored dtypes == the schema the receiver expects (before expanding)."""
    bad = schema_mismatch({k: (s.shape, restored[k]) for k, s in specs.items()}, expected)
    if bad:
        raise SchemaMismatch(*bad)
