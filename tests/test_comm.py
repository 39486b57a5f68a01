"""Payload compression (comm.dtype): exact bytes, bounded error, fp32 back to the algorithm."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from fedfm.core.errors import ConfigError, PayloadError
from fedfm.sim.runner import roundtrip
from fedfm.transport.compress import compress, decompress, dequantize_int8, quantize_int8
from fedfm.transport.messages import ClientTask, ClientUpdate, decode, encode


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(64, 32, generator=g), "b": torch.randn(300, generator=g) * 1e-3,
            "zero": torch.zeros(8, 4), "steps": torch.arange(5)}


def _data_bytes(blob: bytes) -> int:
    (n,) = struct.unpack("<Q", blob[:8])
    return len(blob) - 8 - n


def test_int8_error_within_half_a_step():
    x = _tensors()["a"]
    q, s = quantize_int8(x)
    assert q.dtype == torch.int8 and s == pytest.approx(float(x.abs().max()) / 127)
    err = (dequantize_int8(q, s) - x).abs().max()
    assert err <= s / 2 + 1e-7
    assert int(q.abs().max()) == 127  # the largest entry maps to the end of the range


def test_zero_tensor_quantises_to_zero():
    q, s = quantize_int8(torch.zeros(3, 3))
    assert s == 0.0 and torch.equal(dequantize_int8(q, s), torch.zeros(3, 3))


@pytest.mark.parametrize("dtype,rel", [("fp32", 0.0), ("bf16", 2**-8), ("int8", 1 / 254)])
def test_roundtrip_restores_fp32_with_bounded_error(dtype, rel):
    src = _tensors()
    msg, _ = roundtrip(ClientUpdate(3, 1, 10, src, {"loss": 0.5}), dtype)
    assert msg.round == 3 and msg.metrics == {"loss": 0.5}
    for k, x in src.items():
        y = msg.tensors[k]
        assert y.dtype == x.dtype and y.shape == x.shape
        if not x.is_floating_point():
            assert torch.equal(x, y)
            continue
        bound = rel * float(x.abs().max())  # bf16: relative per entry; int8: per tensor
        assert float((y - x).abs().max()) <= bound + 1e-12, k


def test_bytes_halve_and_quarter_exactly():
    src = {k: v for k, v in _tensors().items() if v.is_floating_point()}
    n = sum(v.numel() for v in src.values())
    task = ClientTask(0, 2, src)
    sizes = {d: encode(task, d) for d in ("fp32", "bf16", "int8")}
    assert _data_bytes(sizes["fp32"]) == 4 * n
    assert _data_bytes(sizes["bf16"]) == 2 * n
    assert _data_bytes(sizes["int8"]) == 1 * n
    _, counted = roundtrip(task, "int8")
    assert counted == len(sizes["int8"])  # bytes counted = the blob on the wire


def test_non_finite_tensor_travels_unchanged():
    x = torch.tensor([1.0, float("nan"), 2.0])
    msg = decode(encode(ClientUpdate(0, 0, 1, {"x": x}), "int8"))
    assert torch.isnan(msg.tensors["x"][1]) and msg.tensors["x"][0] == 1.0


def test_unknown_dtype_is_a_payload_error():
    with pytest.raises(PayloadError, match="bf16, fp32, int8"):
        encode(ClientTask(0, 0, {"x": torch.ones(2)}), "fp16")


def _tamper(blob: bytes, edit) -> bytes:
    """Rewrite the fedfm JSON inside a safetensors header (same tensor bytes)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["fedfm"])
    edit(meta)
    header["__metadata__"]["fedfm"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + blob[8 + n :]


@pytest.mark.parametrize("edit", [
    lambda m: m["codec"]["scales"].pop("a"),
    lambda m: m["codec"]["scales"].update(a=-1.0),
    lambda m: m["codec"].update(dtype="fp8"),
    lambda m: m["codec"]["orig"]["float32"].append("ghost"),
    lambda m: m["codec"]["orig"].update(float8=["a"]),
    lambda m: m.update(codec="int8"),
])
def test_malformed_codec_metadata_is_rejected(edit):
    blob = encode(ClientUpdate(0, 0, 1, {"a": torch.randn(4, 4)}), "int8")
    decode(blob)  # untampered: fine
    with pytest.raises(PayloadError):
        decode(_tamper(blob, edit))


def test_int8_tensor_claimed_as_bf16_is_rejected():
    blob = encode(ClientUpdate(0, 0, 1, {"a": torch.randn(4, 4)}), "int8")
    with pytest.raises(PayloadError, match="expected torch.bfloat16"):
        decode(_tamper(blob, lambda m: m["codec"].update(dtype="bf16")))


def test_config_rejects_unknown_comm_dtype(tiny_cfg):
    with pytest.raises(ConfigError, match="comm.dtype must be fp32, bf16 or int8"):
        tiny_cfg(**{"comm.dtype": "fp16"})


def test_compress_fp32_is_identity():
    src = _tensors()
    out, meta = compress(src, "fp32")
    assert meta is None and all(out[k] is src[k] for k in src)
    assert decompress(out, None).keys() == src.keys()


def test_run_with_int8_payloads_quarters_bytes_and_still_learns(tiny_cfg, tmp_path):
    from fedfm.run import run

    s32 = run(tiny_cfg(out=str(tmp_path / "fp32")), quiet=True)
    s8 = run(tiny_cfg(**{"comm.dtype": "int8", "out": str(tmp_path / "int8")}), quiet=True)
    # tiny tensors: the JSON header (names, scales) is a large share of each blob here, so
    # only the order is asserted; exact data bytes are checked above
    assert s8["bytes_up"] < 0.7 * s32["bytes_up"] and s8["bytes_down"] < 0.7 * s32["bytes_down"]
    assert s8["comm_dtype"] == "int8" and s32["comm_dtype"] == "fp32"
    assert abs(s8["acc_global"] - s32["acc_global"]) <= 0.15
