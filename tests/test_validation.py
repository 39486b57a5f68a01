"""fedfm.transport.validation: each check, in the documented order, on hand-built updates; safe formats."""

from __future__ import annotations

import math
import pickle
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.core.errors import PayloadError
from fedfm.core.reliability import ValidationConfig
from fedfm.transport.messages import ClientTask, ClientUpdate, decode, encode
from fedfm.transport.validation import (
    UpdateRejected,
    byte_cap,
    clip_to,
    expected_schema,
    require_valid,
    schema_of,
    validate_update,
)

REF = {"w": torch.zeros(4, 3), "b": torch.ones(3)}


def task(rnd=2, cid=5) -> ClientTask:
    return ClientTask(rnd, cid, REF)


def update(rnd=2, cid=5, n=10, metrics=None, **tensors) -> ClientUpdate:
    ts = {"w": torch.full((4, 3), 0.1), "b": torch.ones(3) * 1.1, **tensors}
    ts = {k: v for k, v in ts.items() if v is not None}
    return ClientUpdate(rnd, cid, n, ts, metrics or {"loss": 0.5})


def reason(u, cfg=None, **kw) -> str:
    v = validate_update(encode(u) if not isinstance(u, bytes) else u, task(), cfg, **kw)
    assert v.update is None, "expected a rejection"
    return str(v.rejection)


def test_a_good_update_passes_unchanged():
    v = validate_update(encode(update()), task())
    assert v.ok and torch.equal(v.update.tensors["w"], update().tensors["w"])


def test_byte_cap_is_checked_before_decoding():
    cfg = ValidationConfig(max_update_bytes=100)
    garbage = b"\xff" * 1000  # not even safetensors: the cap must reject it first
    assert "exceeds the cap of 100 bytes" in reason(garbage, cfg)
    auto = byte_cap(ValidationConfig(), schema_of(REF))
    assert auto == 15 * 4 + (1 << 20) + 256 * 2
    big = update(extra=None)
    assert validate_update(encode(big), task(), ValidationConfig(max_update_bytes=len(encode(big)))).ok
    # an already-decoded update: the transport passes its wire length
    v = validate_update(big, task(), ValidationConfig(max_update_bytes=10), nbytes=11)
    assert "exceeds the cap" in str(v.rejection)


def test_undecodable_payloads_are_rejected():
    assert "undecodable" in reason(b"12345678")
    assert "undecodable" in reason(struct.pack("<Q", 2) + b"{}")


def test_schema_is_what_that_client_was_assigned():
    assert "key 'w'" in reason(update(w=torch.zeros(4, 4))) and "shape" in reason(update(w=torch.zeros(4, 4)))
    assert "missing tensor" in reason(update(b=None))
    assert "unexpected tensor" in reason(update(extra=torch.zeros(1)))
    assert "dtype" in reason(update(w=torch.zeros(4, 3, dtype=torch.float64)))
    # a subnetwork client: the algorithm declares a smaller upload for this task
    sub = {"w": ((2, 3), torch.float32)}
    u = ClientUpdate(2, 5, 3, {"w": torch.zeros(2, 3)})
    assert validate_update(encode(u), task(), expected=sub).ok
    assert not validate_update(encode(update()), task(), expected=sub).ok


def test_expected_schema_is_the_algorithms_upload_schema():
    from fedfm.algorithms.adapter import SHARE_ALL, Adapter

    class Declared:
        def __init__(self, adapter):
            self.adapter = adapter

        def upload_schema(self, t):
            return self.adapter.schema(t.tensors)

    assert expected_schema(Declared(SHARE_ALL), task()) == schema_of(REF)
    body_only = Adapter(lambda k: k != "w")
    assert set(expected_schema(Declared(body_only), task())) == {"w"}


def test_non_finite_values_are_rejected_naming_the_key():
    w = torch.zeros(4, 3)
    w[1, 2] = float("nan")
    assert "key 'w'" in reason(update(w=w)) and "non-finite" in reason(update(w=w))
    b = torch.ones(3)
    b[0] = float("inf")
    assert "key 'b'" in reason(update(b=b))
    nan_metric = update(metrics={"loss": float("nan")})
    assert "non-finite metric" in str(validate_update(nan_metric, task()).rejection)


def test_norm_bound_reject_and_clip():
    u = update(w=torch.full((4, 3), 1.0), b=torch.ones(3))  # ||Δ|| = sqrt(12)
    norm = math.sqrt(12)
    assert "exceeds the bound" in reason(u, ValidationConfig(norm_bound=1.0))
    v = validate_update(encode(u), task(), ValidationConfig(norm_bound=1.0, norm_action="clip"))
    assert v.ok and v.clipped and v.norm == pytest.approx(norm)
    delta = v.update.tensors["w"] - REF["w"]
    assert float(delta.norm()) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(v.update.tensors["b"], REF["b"])  # b did not move: Δ_b = 0
    assert validate_update(encode(u), task(), ValidationConfig(norm_bound=10.0)).ok


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
       st.floats(1e-3, 1e2))
def test_clipped_norm_never_exceeds_the_bound(values, bound):
    t = {"x": torch.tensor(values, dtype=torch.float64)}
    ref = {"x": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    out, before = clip_to(t, ref, bound)
    after = float((out["x"] - ref["x"]).norm())
    assert after <= bound * (1 + 1e-9)
    if before <= bound:
        assert torch.allclose(out["x"], t["x"])


def test_num_examples_must_be_sane():
    assert "num_examples 0" in reason(update(n=0))
    assert "num_examples -3" in reason(update(n=-3))
    assert "exceeds validation.max_num_examples" in reason(update(n=10**9),
                                                           ValidationConfig(max_num_examples=1000))


def test_round_and_client_identity():
    assert "stale update: round 1, expected 2" in reason(update(rnd=1))
    assert "claims client 6" in reason(update(cid=6))
    late = validate_update(encode(update(rnd=2)), task(), current_round=3)
    assert "stale" in str(late.rejection)


def test_checks_run_in_the_documented_order():
    # wrong shape AND NaN AND stale AND bad count: the schema check speaks first
    w = torch.full((2, 2), float("nan"))
    assert "shape" in reason(update(rnd=0, n=0, w=w))
    # finite before norm before examples before round
    w = torch.full((4, 3), float("inf"))
    assert "non-finite" in reason(update(rnd=0, n=0, w=w), ValidationConfig(norm_bound=0.1))
    w = torch.full((4, 3), 5.0)
    assert "bound" in reason(update(rnd=0, n=0, w=w), ValidationConfig(norm_bound=0.1))
    assert "num_examples" in reason(update(rnd=0, n=0))


def test_require_valid_raises_a_payload_error():
    with pytest.raises(UpdateRejected, match="client 5.*stale") as e:
        require_valid(encode(update(rnd=0)), task())
    assert isinstance(e.value, PayloadError) and e.value.rejection.client_id == 5


class _Sentinel:
    """Unpickling this would create a file (the classic pickle exploit)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_is_refused_and_never_unpickled(tmp_path):
    sentinel = tmp_path / "pwned"
    blob = pickle.dumps(_Sentinel(str(sentinel)))
    assert not sentinel.exists()
    v = validate_update(blob, task())
    assert v.rejection is not None and "undecodable" in v.rejection.reason
    with pytest.raises(PayloadError):
        decode(blob)
    # torch.save output is a zip of pickles: refused the same way
    path = tmp_path / "update.pt"
    torch.save({"w": _Sentinel(str(sentinel))}, path)
    assert not validate_update(path.read_bytes(), task()).ok
    assert not sentinel.exists()
