"""Checkpoint / resume: SIGKILL after round 2 -> `fedfm resume` -> identical to an uninterrupted
run; truncated, tampered and config-changed checkpoints are refused with clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedfm.cli import main
from fedfm.config import build_config
from fedfm.core.errors import ConfigError, PayloadError
from fedfm.run import resume_run, run
from fedfm.sim.checkpoint import Checkpointer, rng_states, set_rng_states
from tests.conftest import tiny_raw

# a run that exercises every piece of state: private heads (fedper), dropouts and stragglers
# (pending late updates), per-client evaluation metrics (eval at rounds 2 and 4)
SCENARIO = dict(algorithm="fedper", rounds=4, **{
    "eval.every": 2, "availability.drop_prob": 0.25,
    "availability.tiers": {"fast": 1.0, "slow": 3.0}, "availability.deadline": 2.0,
    "availability.jitter": 0.5, "checkpoint.enabled": True})
TIMING = {"round_wall_s", "client_compute_s", "eval_wall_s", "client_eval_s", "peak_rss_mb"}

KILLER = """
import json, os, signal, sys
from fedfm.config import build_config
from fedfm.run import run
from fedfm.sim import checkpoint
save = checkpoint.Checkpointer.save
def save_then_die(self, rnd, runner, rows):
    out = save(self, rnd, runner, rows)
    if rnd == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
checkpoint.Checkpointer.save = save_then_die
run(build_config(json.loads(sys.argv[1])), quiet=True)
"""


def raw_for(out: Path, **over) -> dict:
    raw = tiny_raw(**{**SCENARIO, **over})
    raw["out"] = str(out)
    return raw


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def metrics(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    run(build_config(raw_for(out)), quiet=True)
    return out


def killed_run(out: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(raw_for(out))], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


class Crash(Exception):
    pass


def assert_same_run(reference: Path, out: Path) -> None:
    a = load_file(str(reference / "final" / "global.safetensors"))
    b = load_file(str(out / "final" / "global.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = metrics(reference), metrics(out)
    assert [r["round"] for r in rb] == [1, 2, 3, 4]
    assert comparable(ra) == comparable(rb)
    sa = json.loads((reference / "summary.json").read_text())
    sb = json.loads((out / "summary.json").read_text())
    assert sa["acc_personal_mean"] == sb["acc_personal_mean"]
    assert [c.get("acc_personal") for c in sa["clients"]] == \
        [c.get("acc_personal") for c in sb["clients"]]


@pytest.mark.slow
def test_sigkill_after_round_2_then_resume_is_identical(reference, tmp_path):
    out = tmp_path / "run"
    killed_run(out)
    latest = json.loads((out / "checkpoint" / "latest.json").read_text())
    assert latest["round"] == 2 and not (out / "final").exists()
    assert len(metrics(out)) == 2
    assert main(["resume", str(out), "--quiet"]) == 0
    assert_same_run(reference, out)


def test_crash_after_round_2_then_resume_is_identical(reference, tmp_path, monkeypatch):
    """The in-process twin of the SIGKILL test (fast): a crash right after round 2's save."""
    out = tmp_path / "run"
    save = Checkpointer.save

    def save_then_crash(self, rnd, runner, rows):
        path = save(self, rnd, runner, rows)
        if rnd == 2:
            raise Crash
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)
    with pytest.raises(Crash):
        run(build_config(raw_for(out)), quiet=True)
    monkeypatch.setattr(Checkpointer, "save", save)
    # state after the crash must not leak into the resumed run: scramble the global RNG
    torch.manual_seed(12345)
    resume_run(out, quiet=True)
    assert_same_run(reference, out)


def test_resume_state_covers_memory_and_stragglers(reference):
    ck = Checkpointer(reference, build_config(raw_for(reference))).read()
    meta = ck["meta"]
    assert meta["round"] == 4 and len(meta["rows"]) == 4
    assert set(meta["clients"]) == {"0", "1", "2", "3"}  # fedper's private heads
    assert sum(r.get("late", 0) for r in meta["rows"]) > 0  # stragglers happened
    assert "rng/torch" in ck["tensors"]
    summary = json.loads((reference / "summary.json").read_text())  # totals in summary.json
    for key in ("rejected", "dropped", "late", "stale"):
        assert summary[key] == sum(r[key] for r in meta["rows"])


@pytest.fixture
def checkpointed(tmp_path) -> Path:
    out = tmp_path / "run"
    run(build_config(raw_for(out, rounds=2)), quiet=True)
    return out


def test_truncated_checkpoint_is_a_clear_error(checkpointed):
    f = checkpointed / "checkpoint" / "round-0002.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(PayloadError, match="truncated"):
        resume_run(checkpointed, quiet=True)
    assert main(["resume", str(checkpointed), "--quiet"]) == 2


def test_tampered_checkpoint_is_a_clear_error(checkpointed):
    f = checkpointed / "checkpoint" / "round-0002.safetensors"
    blob = bytearray(f.read_bytes())
    blob[-5] ^= 0xFF  # same length, one tensor byte flipped
    f.write_bytes(bytes(blob))
    with pytest.raises(PayloadError, match="SHA-256"):
        resume_run(checkpointed, quiet=True)


def test_resume_with_a_different_config_is_refused(checkpointed):
    with pytest.raises(ConfigError, match="Refusing to resume"):
        resume_run(checkpointed, ["train.lr=0.1"], quiet=True)
    cfg = json.loads((checkpointed / "config.json").read_text())
    cfg["seed"] = 7
    (checkpointed / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="Refusing to resume"):
        resume_run(checkpointed, quiet=True)


def test_no_checkpoint_gives_a_clear_error(tmp_path):
    out = tmp_path / "plain"
    run(build_config(raw_for(out, rounds=1, **{"checkpoint.enabled": False})), quiet=True)
    assert not (out / "checkpoint").exists()
    with pytest.raises(ConfigError, match="No checkpoint"):
        resume_run(out, quiet=True)


def test_global_rng_states_round_trip():
    """torch / numpy / python global RNGs (e.g. model dropout) continue where they stopped."""
    import random

    import numpy as np

    torch_state, states = rng_states()
    json.loads(json.dumps(states))  # the JSON part must be JSON
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    set_rng_states(torch_state, states)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


class _Sentinel:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_checkpoint_is_refused_even_with_a_matching_checksum(checkpointed, tmp_path):
    """Someone replaces the checkpoint by a pickle and fixes latest.json: never unpickled."""
    import hashlib
    import pickle

    sentinel = tmp_path / "pwned"
    blob = pickle.dumps({"state": _Sentinel(str(sentinel))})
    f = checkpointed / "checkpoint" / "round-0002.safetensors"
    f.write_bytes(blob)
    latest_path = checkpointed / "checkpoint" / "latest.json"
    latest = json.loads(latest_path.read_text())
    latest.update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    latest_path.write_text(json.dumps(latest))
    with pytest.raises(PayloadError, match="cannot be parsed|not JSON|too short|header"):
        resume_run(checkpointed, quiet=True)
    assert not sentinel.exists()


@pytest.mark.parametrize("algorithm", ["fedsa", "feddpa", "fedavg-ft", "ditto"])
def test_personalised_baselines_resume_identically(algorithm, tmp_path, monkeypatch):
    """Issue #19's baselines keep private state (B, local adapter, personal model): a crash after
    round 2 + resume = the uninterrupted run, for each of them."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    run(build_config(raw_for(ref, algorithm=algorithm)), quiet=True)
    save = Checkpointer.save

    def save_then_crash(self, rnd, runner, rows):
        path = save(self, rnd, runner, rows)
        if rnd == 2:
            raise Crash
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)
    with pytest.raises(Crash):
        run(build_config(raw_for(out, algorithm=algorithm)), quiet=True)
    monkeypatch.setattr(Checkpointer, "save", save)
    resume_run(out, quiet=True)
    assert_same_run(ref, out)
