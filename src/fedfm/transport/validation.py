"""Validation of a client update before aggregation — runtime-neutral (embedded and Flower).

Checks, in this order (the first failure rejects the update):
  1. size:     len(blob) <= cap, before any decoding (cap = validation.max_update_bytes, or
               auto = the expected tensors' bytes + AUTO_SLACK for headers and metrics)
  2. decode:   a well-formed safetensors blob with fedfm metadata (never pickle)
  3. schema:   keys, shapes and dtypes == what THAT client was assigned: the algorithm's
               `upload_schema(task) -> {key: (shape, dtype)}`, read from its one declaration of
               what travels (fedfm.algorithms.adapter; the rank / widths a task assigns)
  4. finite:   every float tensor and every metric is finite
  5. norm:     ||Δ||₂ <= B with Δ_key = θ_key - θ_task,key (θ_key itself when the task holds no
               tensor of that shape); above B: reject, or clip θ = θ_task + Δ · B / ||Δ||₂
  6. examples: num_examples is an int in [1, max_num_examples]
  7. identity: round == the task's round (else stale) and client_id == the task's client
A rejection names the client, the offending key (if any) and the reason; the caller logs it and
aggregates the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from fedfm.core.errors import PayloadError
from fedfm.core.reliability import ValidationConfig
from fedfm.transport.messages import ClientTask, ClientUpdate, decode, finite_metrics
from fedfm.transport.wire import SchemaMismatch, schema_mismatch

Schema = dict[str, tuple[tuple[int, ...], torch.dtype]]
AUTO_SLACK = 1 << 20  # bytes allowed beyond the raw tensor data: safetensors header + JSON metrics


@dataclass(frozen=True)
class Rejection:
    """Why one client's update was refused."""

    client_id: int
    reason: str
    key: str | None = None

    def __str__(self) -> str:
        where = f" (key '{self.key}')" if self.key else ""
        return f"client {self.client_id}{where}: {self.reason}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of `validate_update`: the (possibly clipped) update, or a rejection."""

    update: ClientUpdate | None
    rejection: Rejection | None = None
    norm: float | None = None
    clipped: bool = False

    @property
    def ok(self) -> bool:
        return self.rejection is None


class UpdateRejected(PayloadError):
    """Raised by `require_valid` (for runtimes that prefer exceptions)."""

    def __init__(self, rejection: Rejection):
        super().__init__(f"rejected update of {rejection}")
        self.rejection = rejection


def schema_of(tensors: Mapping[str, torch.Tensor]) -> Schema:
    return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}


def expected_schema(algorithm, task: ClientTask) -> Schema:
    """The upload schema the algorithm declares for `task` (part of the seam: every algorithm
    has `upload_schema`, fedfm.algorithms.base)."""
    return dict(algorithm.upload_schema(task))


def byte_cap(cfg: ValidationConfig, expected: Schema) -> int:
    if cfg.max_update_bytes:
        return cfg.max_update_bytes
    data = sum(math.prod(shape) * torch.empty((), dtype=dt).element_size()
               for shape, dt in expected.values())
    return data + AUTO_SLACK + 256 * len(expected)


def check_schema(tensors: Mapping[str, torch.Tensor], expected: Schema) -> tuple[str, str] | None:
    """(key, reason) of the first mismatch between tensors and the expected schema."""
    return schema_mismatch(schema_of(tensors), expected)


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return key
    return None


def deltas(tensors: Mapping[str, torch.Tensor],
           reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Δ_key = θ_key - θ_ref,key (float64), or θ_key when the reference has no such tensor."""
    out = {}
    for k, t in tensors.items():
        ref = reference.get(k)
        same = ref is not None and ref.shape == t.shape
        out[k] = t.double() - ref.double() if same else t.double()
    return out


def l2_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors.values()))


def clip_to(tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
            bound: float) -> tuple[dict[str, torch.Tensor], float]:
    """θ' = θ_ref + Δ · min(1, B / ||Δ||₂); returns (θ', ||Δ||₂ before clipping)."""
    d = deltas(tensors, reference)
    norm = l2_norm(d)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    out = {}
    for k, t in tensors.items():
        base = t.double() - d[k]  # θ_ref (or 0)
        out[k] = (base + d[k] * scale).to(t.dtype)
    return out, norm


def _decode(blob: bytes, cid: int, expected: Schema) -> ClientUpdate | Rejection:
    try:  # shapes are checked against `expected` before any tensor is expanded
        msg = decode(blob, expected=expected)
    except SchemaMismatch as e:
        return Rejection(cid, e.reason, e.key)
    except PayloadError as e:
        return Rejection(cid, f"undecodable payload: {e}")
    if not isinstance(msg, ClientUpdate):
        return Rejection(cid, "payload is a task, not an update")
    return msg


def validate_update(blob_or_update: bytes | ClientUpdate, task: ClientTask,
                    cfg: ValidationConfig | None = None, expected: Schema | None = None,
                    current_round: int | None = None, nbytes: int | None = None) -> Verdict:
    """Check one client's answer to `task` (see the module docstring for the order).

    blob_or_update: the raw bytes (preferred: the cap is checked before decoding), or an update
    a transport already decoded, with `nbytes` = its wire length for the cap check.
    expected: the upload schema (default: the task's tensors' schema; use `expected_schema`).
    current_round: the round being aggregated (default: task.round); an update for another
    round is stale.
    """
    cfg = cfg or ValidationConfig()
    cid = task.client_id
    expected = schema_of(task.tensors) if expected is None else expected
    is_blob = isinstance(blob_or_update, (bytes, bytearray, memoryview))
    size = len(blob_or_update) if is_blob else nbytes
    cap = byte_cap(cfg, expected)
    if size is not None and size > cap:
        return Verdict(None, Rejection(cid, f"payload of {size} bytes exceeds the cap of {cap} "
                                            f"bytes (validation.max_update_bytes)"))
    if is_blob:
        got = _decode(bytes(blob_or_update), cid, expected)
        if isinstance(got, Rejection):
            return Verdict(None, got)
        update = got
    else:
        update = blob_or_update
    return _check_decoded(update, task, cfg, expected, current_round)


def _check_decoded(update: ClientUpdate, task: ClientTask, cfg: ValidationConfig,
                   expected: Schema, current_round: int | None) -> Verdict:
    cid = task.client_id
    bad = check_schema(update.tensors, expected)
    if bad:
        return Verdict(None, Rejection(cid, bad[1], bad[0]))
    key = first_non_finite(update.tensors)
    if key:
        return Verdict(None, Rejection(cid, "non-finite values (NaN or inf)", key))
    if not finite_metrics(update.metrics):
        return Verdict(None, Rejection(cid, "non-finite metric values"))
    norm, clipped = None, False
    if cfg.norm_bound > 0:
        norm = l2_norm(deltas(update.tensors, task.tensors))
        if norm > cfg.norm_bound:
            if cfg.norm_action == "reject":
                return Verdict(None, Rejection(cid, f"update norm {norm:.4g} exceeds the bound "
                                                    f"{cfg.norm_bound:.4g}"), norm)
            tensors, _ = clip_to(update.tensors, task.tensors, cfg.norm_bound)
            update, clipped = replace(update, tensors=tensors), True
    n = update.num_examples
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return Verdict(None, Rejection(cid, f"num_examples {n!r} must be an integer >= 1"), norm)
    if cfg.max_num_examples and n > cfg.max_num_examples:
        return Verdict(None, Rejection(cid, f"num_examples {n} exceeds "
                                            f"validation.max_num_examples={cfg.max_num_examples}"),
                       norm)
    rnd = task.round if current_round is None else current_round
    if update.round != rnd:
        return Verdict(None, Rejection(cid, f"stale update: round {update.round}, expected {rnd}"),
                       norm)
    if update.client_id != cid:
        return Verdict(None, Rejection(cid, f"update claims client {update.client_id}, but "
                                            f"answers client {cid}'s task"), norm)
    return Verdict(update, None, norm, clipped)


def require_valid(blob_or_update: bytes | ClientUpdate, task: ClientTask,
                  cfg: ValidationConfig | None = None, expected: Schema | None = None,
                  current_round: int | None = None, nbytes: int | None = None) -> ClientUpdate:
    """`validate_update` that raises UpdateRejected instead of returning a rejection."""
    verdict = validate_update(blob_or_update, task, cfg, expected, current_round, nbytes)
    if verdict.rejection is not None:
        raise UpdateRejected(verdict.rejection)
    return verdict.update
