"""Typed payloads (fedfm.transport.messages): the codec between frozen dataclasses and the
string-keyed wire form, and the one declaration of what trains and travels (Adapter)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fedfm.algorithms.adapter import KEEP_ALL, SHARE_ALL, Adapter, is_head, personal_head
from fedfm.algorithms.fedsa import FedSAOptions, adapter
from fedfm.core.errors import PayloadError
from fedfm.transport.messages import (
    ClientTask,
    ClientUpdate,
    EvalResult,
    decode,
    encode,
    fields_of,
    read_payload,
)


@dataclass(frozen=True)
class Spec:
    rank: int
    tier: str
    budget: float
    blocks: list[int]
    widths: tuple[int, ...] = ()
    note: str | None = None


def test_wire_form_is_the_old_string_keyed_dict_and_reads_back_typed():
    spec = Spec(3, "small", 0.5, [0, 2], (4, 4))
    wire = fields_of(spec)
    assert wire == {"rank": 3, "tier": "small", "budget": 0.5, "blocks": [0, 2],
                    "widths": [4, 4]}  # declaration order; None optional left out
    assert list(wire) == ["rank", "tier", "budget", "blocks", "widths"]
    task = decode(encode(ClientTask(1, 2, {}, wire)))
    assert task.read(Spec) == spec
    assert read_payload(Spec, {**wire, "extra": 1}) == spec  # other keys are ignored


@pytest.mark.parametrize("bad", [{"rank": "3"}, {"rank": True}, {"budget": "x"},
                                 {"blocks": [1, "a"]}, {"tier": None}])
def test_a_mistyped_or_missing_field_is_a_payload_error(bad):
    wire = {**fields_of(Spec(3, "s", 0.5, [0])), **bad}
    with pytest.raises(PayloadError):
        read_payload(Spec, wire)
    with pytest.raises(PayloadError, match="lacks 'tier'"):
        read_payload(Spec, {"rank": 1, "budget": 1.0, "blocks": []})


def test_eval_result_extra_metrics_and_accuracy():
    up = ClientUpdate(0, 1, 4, {}, fields_of(EvalResult(3, 4), alpha_mean=0.2))
    assert up.metrics == {"correct": 3, "total": 4, "alpha_mean": 0.2}  # no "loss": None
    r = decode(encode(up)).read(EvalResult)
    assert (r.correct, r.total, r.loss, r.accuracy) == (3, 4, None, 0.75)
    assert fields_of(EvalResult(1, 2, 0.5))["loss"] == 0.5


def test_adapter_declares_what_travels_and_the_upload_schema():
    t = {"backbone.q.lora_A": torch.zeros(2, 4), "backbone.q.lora_B": torch.zeros(4, 2),
         "head.weight": torch.zeros(3, 4), "head.bias": torch.zeros(3)}
    assert SHARE_ALL.shared(t).keys() == t.keys() and not KEEP_ALL.shared(t)
    fedper = personal_head(object())  # no is_personal: the classification head
    assert set(fedper.shared(t)) == {"backbone.q.lora_A", "backbone.q.lora_B"}
    assert set(fedper.private_part(t)) == {"head.weight", "head.bias"}
    local_head = adapter(FedSAOptions())
    assert set(local_head.schema(t)) == {"backbone.q.lora_A"}
    assert local_head.schema(t)["backbone.q.lora_A"] == ((2, 4), torch.float32)
    shared_head = adapter(FedSAOptions(head="shared"))
    assert set(shared_head.shared(t)) == {"backbone.q.lora_A", "head.weight", "head.bias"}
    assert is_head("head.heads.t1.weight") and not Adapter().private("head.weight")
