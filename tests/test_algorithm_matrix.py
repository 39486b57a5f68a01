"""Every registered algorithm, end to end, on a synthetic task where learning is easy.

Parametrised from the algorithm registry, so a newly registered algorithm joins automatically
(add a row to OVERRIDES only if it needs more than the common setup). For each algorithm:
  - it learns: the best accuracy it reports beats chance (4 labels: 0.25) by >= 0.25;
  - a clean run rejects no upload (`rejected` = 0 every round, `eval_rejected` = 0);
  - (slow) a crash right after round 2's checkpoint, then `resume`, ends bit-identical to the
    uninterrupted run: every tensor of the final checkpoint (server state and every client's
    private memory) and every metric but wall times;
  - (slow) [aggregation] krum and [dp] reach the algorithm's aggregation (metrics show it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedfm.algorithms import registry
from fedfm.algorithms.capabilities import resolve
from fedfm.config import build_config
from fedfm.run import resume_run, run
from fedfm.sim.checkpoint import Checkpointer
from tests.conftest import tiny_raw

CHANCE = 0.25  # synthetic data: 4 balanced labels, iid partition
MARGIN = 0.25
COMMON = {"rounds": 3, "eval.every": 3, "train.lr": 0.02, "train.local_epochs": 2,
          "data.partition": "iid"}
MOE = {"resources.unit": "memory", "resources.tiers": {"small": 0.5, "large": 1.0},
       "resources.proportions": {"small": 0.5, "large": 0.5}, "train.lr": 0.01}
OVERRIDES = {
    "fedmoe": {**MOE, "fedmoe.num_experts": 4, "fedmoe.top_k": 2},
    "randommoe": {**MOE, "randommoe.num_experts": 4, "randommoe.top_k": 2},
}
TIMING = {"round_wall_s", "client_compute_s", "eval_wall_s", "client_eval_s", "peak_rss_mb"}
ALGORITHMS = registry.names()
_REFERENCE: dict[str, Path] = {}


def raw_for(algo: str, out: Path, **over) -> dict:
    return tiny_raw(algorithm=algo, out=str(out), **{**COMMON, **OVERRIDES.get(algo, {}), **over})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run per algorithm, shared by the tests of this module."""
    def get(algo: str) -> Path:
        if algo not in _REFERENCE:
            out = tmp_path_factory.mktemp(algo) / "run"
            run(build_config(raw_for(algo, out)), quiet=True)
            _REFERENCE[algo] = out
        return _REFERENCE[algo]
    return get


def rows_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_learns_and_accepts_every_upload(algo, reference):
    out = reference(algo)
    s = json.loads((out / "summary.json").read_text())
    accs = [a for a in (s["acc_global"], s["acc_personal_mean"]) if a is not None]
    assert accs and max(accs) >= CHANCE + MARGIN, (algo, accs)
    rows = rows_of(out)
    assert [r["rejected"] for r in rows] == [0] * COMMON["rounds"], algo
    assert rows[-1]["eval_rejected"] == 0
    assert (out / "checkpoint" / "latest.json").is_file()  # checkpoints are on by default


class Crash(Exception):
    pass


def final_state(out: Path) -> dict[str, torch.Tensor]:
    ck = Checkpointer(out, build_config(json.loads((out / "config.json").read_text()))).read()
    assert ck["meta"]["round"] == COMMON["rounds"]
    return ck["tensors"]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGORITHMS)
def test_kill_and_resume_is_bit_identical(algo, reference, tmp_path, monkeypatch):
    ref = reference(algo)
    out = tmp_path / "run"
    save = Checkpointer.save

    def save_then_crash(self, rnd, runner, rows):
        path = save(self, rnd, runner, rows)
        if rnd == 2:
            raise Crash
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)
    with pytest.raises(Crash):
        run(build_config(raw_for(algo, out)), quiet=True)
    monkeypatch.setattr(Checkpointer, "save", save)
    torch.manual_seed(12345)  # whatever the crashed process left must not matter
    resume_run(out, quiet=True)
    # rng/torch is the process's global RNG, carried along: it depends on where each process
    # started, and nothing a run computes draws from it (every draw is seeded by round/client)
    a, b = ({k: v for k, v in final_state(o).items() if k != "rng/torch"} for o in (ref, out))
    assert a.keys() == b.keys() and len(a) > 1
    assert [k for k in a if not torch.equal(a[k], b[k])] == [], algo
    strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in rows_of(o)]
             for o in (ref, out)]
    assert strip[0] == strip[1]


def _caps(algo: str):
    e = registry.get(algo)
    return resolve(e.capabilities, e.options() if e.options is not None else None)


@pytest.mark.slow
@pytest.mark.parametrize("algo", [a for a in ALGORITHMS if _caps(a).dp])
def test_robust_rule_and_dp_reach_the_aggregation(algo, tmp_path):
    one = {"rounds": 1, "eval.every": 1}
    if algo == "fedmoe":  # no profiling round: clients upload experts from round 1
        one["fedmoe.profile_rounds"] = 0
    krum = {"aggregation.method": "krum", "aggregation.byzantine": 1, **one}
    rows = rows_of(_run(algo, tmp_path / "krum", krum))
    assert any(r.get("agg_selected") for r in rows), algo
    dp = {"dp.enabled": True, "dp.noise_multiplier": 0.5, **one}
    rows = rows_of(_run(algo, tmp_path / "dp", dp))
    assert any(r.get("dp_epsilon") for r in rows) and all(r["rejected"] == 0 for r in rows)


def _run(algo: str, out: Path, over: dict) -> Path:
    pytest.importorskip("dp_accounting")
    run(build_config(raw_for(algo, out, **over)), quiet=True)
    return out
