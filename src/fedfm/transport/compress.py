"""Payload compression at the transport edge: `comm.dtype = fp32 | bf16 | int8`.

The algorithm never sees a compressed tensor: `compress` runs inside `messages.encode`, and
`messages.decode` restores every tensor to the dtype it had before encoding (fp32 for all of
fedfm's trainable tensors). Both directions (task down, update up) use the same codec, and
`bytes_up`/`bytes_down` stay the exact lengths of the encoded blobs.

  fp32  the tensors as they are (exact).
  bf16  x̂ = bf16(x): 8 exponent bits, 8 significand bits (relative error <= 2^-9), half the bytes.
  int8  symmetric per-tensor quantisation, a quarter of the bytes:
          s = max|x| / 127,  q = clamp(round(x / s), -127, 127) ∈ int8,  x̂ = s · q
        so |x - x̂| <= s / 2. The scale s travels in the message's JSON metadata (an fp32
        value written exactly), with the original dtype of each tensor.

Only floating-point tensors are compressed; integer tensors and tensors holding NaN/Inf travel
unchanged (so the receiver's validation still sees a non-finite update as non-finite).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fedfm.core.errors import PayloadError, choices

DTYPES = ("fp32", "bf16", "int8")
INT8_MAX = 127
_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in
                (torch.float32, torch.float64, torch.float16, torch.bfloat16)}


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise PayloadError(f"unknown comm.dtype '{dtype}'. Valid choices: {choices(DTYPES)}.")


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """x -> (q, s) with s = max|x| / 127 (fp32) and q = round(x / s) in int8; s = 0 for x = 0."""
    x = x.detach().to(torch.float32)
    scale = (x.abs().max() / INT8_MAX) if x.numel() else torch.tensor(0.0)
    if float(scale) == 0.0:
        return torch.zeros_like(x, dtype=torch.int8), 0.0
    q = torch.round(x / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, float(scale)


def dequantize_int8(q: torch.Tensor, scale: float) -> torch.Tensor:
    """x̂ = s · q in fp32 (one fp32 allocation: the scale is applied in place)."""
    return q.to(torch.float32).mul_(torch.tensor(scale, dtype=torch.float32))


def _compressible(t: torch.Tensor) -> bool:
    return t.is_floating_point() and bool(torch.isfinite(t).all())


def compress(tensors: Mapping[str, torch.Tensor],
             dtype: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors -> (wire tensors, codec metadata); metadata is None for fp32 (nothing to undo)."""
    check_dtype(dtype)
    if dtype == "fp32":
        return dict(tensors), None
    out: dict[str, torch.Tensor] = {}
    orig: dict[str, list[str]] = {}  # original dtype -> names of the compressed tensors
    scales: dict[str, float] = {}
    for name, t in tensors.items():
        if not _compressible(t):
            out[name] = t
            continue
        orig.setdefault(str(t.dtype).removeprefix("torch."), []).append(name)
        if dtype == "bf16":
            out[name] = t.detach().to(torch.bfloat16)
        else:
            out[name], scales[name] = quantize_int8(t)
    meta: dict[str, Any] = {"dtype": dtype, "orig": orig}
    if dtype == "int8":
        meta["scales"] = scales
    return out, meta


def decompress(tensors: Mapping[str, torch.Tensor], meta: Any) -> dict[str, torch.Tensor]:
    """Undo `compress`: every compressed tensor comes back in its original dtype."""
    if meta is None:
        return dict(tensors)
    if not isinstance(meta, Mapping) or meta.get("dtype") not in DTYPES[1:]:
        raise PayloadError(f"payload codec metadata is malformed: {meta!r:.200}")
    orig, scales = meta.get("orig"), meta.get("scales", {})
    if not isinstance(orig, Mapping) or not isinstance(scales, Mapping):
        raise PayloadError("payload codec metadata lacks its 'orig'/'scales' tables")
    out = dict(tensors)  # the caller drops its reference: each wire tensor is freed once restored
    for dt, names in orig.items():
        if dt not in _DTYPE_NAMES or not isinstance(names, list):
            raise PayloadError(f"payload codec metadata names an unknown dtype {dt!r}")
        for name in names:
            if name not in out:
                raise PayloadError(f"payload codec names tensor {name!r} it does not carry")
            out[name] = _restore(name, out[name], meta["dtype"], scales).to(_DTYPE_NAMES[dt])
    return out


def _restore(name: str, t: torch.Tensor, dtype: str, scales: Mapping[str, Any]) -> torch.Tensor:
    expected = torch.bfloat16 if dtype == "bf16" else torch.int8
    if t.dtype != expected:
        raise PayloadError(f"payload tensor '{name}' is {t.dtype}, expected {expected} ({dtype})")
    if dtype == "bf16":
        return t
    scale = scales.get(name)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale < 0:
        raise PayloadError(f"payload tensor '{name}' has no valid int8 scale (got {scale!r})")
    return dequantize_int8(t, float(scale))
