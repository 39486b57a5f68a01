"""Round-wise learning-rate schedule (`train.lr_schedule`, `train.lr_min_ratio`).

cosine: f(r) = m + (1 - m)(1 + cos(π r / R)) / 2 scales every parameter group's lr in round r;
the tests observe the lr the optimiser was built with (not the formula) on the embedded and the
Flower runtime, and that `constant` leaves a run bit-identical to a run without the keys.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fedfm.algorithms.training import lr_factor
from fedfm.config import build_config
from fedfm.core.errors import ConfigError
from fedfm.run import run
from tests.conftest import tiny_raw


def test_cosine_factor_curve():
    R, m = 30, 0.1
    f = [lr_factor("cosine", r, R, m) for r in range(1, R + 1)]
    assert f[0] == pytest.approx(1.0, abs=0.01) and f[0] < 1.0
    assert f[-1] == pytest.approx(m)
    assert all(a > b for a, b in zip(f, f[1:]))  # strictly decreasing
    assert f[R // 2 - 1] == pytest.approx(m + (1 - m) / 2)  # halfway at r = R/2
    assert lr_factor("constant", 7, R, m) == 1.0
    assert lr_factor("cosine", 3, 3, 0.0) == pytest.approx(0.0, abs=1e-12)


class Recorder:
    """Wraps torch.optim.AdamW: records each optimiser's group lrs at every step."""

    def __init__(self, monkeypatch):
        self.steps: list[list[float]] = []
        real, rec = torch.optim.AdamW, self

        class AdamW(real):
            def step(self, *a, **k):
                rec.steps.append([g["lr"] for g in self.param_groups])
                return super().step(*a, **k)

        monkeypatch.setattr(torch.optim, "AdamW", AdamW)


def raw_for(out, rounds=3, **over):
    """3 clients, all sampled, 2 steps each: 6 optimiser steps per round, in round order."""
    return tiny_raw(out=str(out), rounds=rounds, **{
        "data.num_clients": 3, "sampling.fraction": 1.0, "train.max_steps": 2,
        "train.head_lr": 2e-2, **over})


@pytest.mark.parametrize("algorithm", ["fedavg", "fedms"])
def test_cosine_run_uses_the_scheduled_lr(algorithm, tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    raw = raw_for(tmp_path / "run", algorithm=algorithm, **{
        "train.lr_schedule": "cosine", "train.lr_min_ratio": 0.2})
    s = run(build_config(raw), quiet=True)
    assert (s["lr_schedule"], s["lr_min_ratio"]) == ("cosine", 0.2)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["lr_factor"] for r in rows] == pytest.approx([0.8, 0.4, 0.2])
    per_round = len(rec.steps) // 3
    assert per_round >= 6 and len(rec.steps) == 3 * per_round
    for r in range(1, 4):
        f = 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * r / 3))
        for lrs in rec.steps[(r - 1) * per_round: r * per_round]:
            assert lrs[0] == pytest.approx(5e-3 * f)  # body (LoRA): train.lr x f(r)
            assert lrs[1] == pytest.approx(2e-2 * f)  # head: train.head_lr x f(r)
            assert all(x <= max(5e-3, 2e-2) * f * 1.0001 for x in lrs)  # every extra group too


def test_flower_clients_use_the_scheduled_lr(tmp_path, monkeypatch):
    """The fedfm-on-Flower path (ClientApp + codec) derives the factor from the task's round."""
    from fedfm.flower.client import make_client_app
    from fedfm.flower.inprocess import InProcessGrid
    from fedfm.flower.strategy import FlowerClients, discover

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    over = {"train.lr_schedule": "cosine", "train.lr_min_ratio": 0.0}
    emb = build_config(raw_for(tmp_path / "emb", rounds=2, **over))
    flw = build_config(raw_for(tmp_path / "flw", rounds=2, **over))
    run(emb, quiet=True)
    rec = Recorder(monkeypatch)
    grid = InProcessGrid(make_client_app(flw), 3)
    run(flw, quiet=True, transport=lambda w: FlowerClients.for_config(grid, discover(grid, 3, 10), flw))
    assert {round(s[0], 12) for s in rec.steps} == {round(5e-3 * 0.5, 12), 0.0}
    a, b = load_file(str(tmp_path / "emb/final/global.safetensors")), load_file(str(tmp_path / "flw/final/global.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_constant_is_bit_identical_to_no_schedule(tmp_path):
    run(build_config(raw_for(tmp_path / "plain", rounds=2)), quiet=True)
    run(build_config(raw_for(tmp_path / "const", rounds=2, **{"train.lr_schedule": "constant"})),
        quiet=True)
    run(build_config(raw_for(tmp_path / "cos", rounds=2, **{"train.lr_schedule": "cosine"})),
        quiet=True)
    a, b, c = (load_file(str(tmp_path / n / "final/global.safetensors"))
               for n in ("plain", "const", "cos"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the schedule changes training


@pytest.mark.parametrize("key,value,words", [
    ("train.lr_schedule", "linear", "train.lr_schedule must be constant or cosine"),
    ("train.lr_min_ratio", 1.5, "train.lr_min_ratio must be in [0, 1]"),
])
def test_bad_schedule_is_a_config_error(key, value, words, tmp_path):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        build_config(raw_for(tmp_path / "bad", **{key: value}))


def test_bad_schedule_exits_2(tmp_path, capsys):
    from fedfm.cli import main

    assert main(["run", "configs/fedavg.toml", "train.lr_schedule=step",
                 f"out={tmp_path / 'x'}"]) == 2
    assert "train.lr_schedule must be constant or cosine, not 'step'" in capsys.readouterr().err
