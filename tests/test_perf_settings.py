"""Performance settings that must hold: tokenise once per run, explicit threads, logged."""

from __future__ import annotations

import subprocess
import sys

from fedfm.models import loading
from fedfm.models.hf import loading as hf_loading


def test_tokenisation_happens_once_per_run(tiny_cfg, monkeypatch):
    from fedfm.run import run

    calls = []
    for cls in (loading.Tokenizer, hf_loading.HFTokenizer):  # legacy BERT / transformers path
        def counting(self, texts, _original=cls.__call__):
            calls.append(len(texts))
            return _original(self, texts)

        monkeypatch.setattr(cls, "__call__", counting)
    summary = run(tiny_cfg(rounds=3), quiet=True)
    assert summary["rounds"] == 3
    assert len(calls) == 1 and calls[0] > 0  # one batch call, before round 1, never per round


def test_threads_are_explicit_and_logged(tiny_cfg):
    from fedfm.run import run

    s = run(tiny_cfg(**{"train.threads": 1}), quiet=True)
    assert s["threads"] == 1 and s["cores"] >= 1 and s["interop_threads"] >= 1
    assert s["comm_dtype"] == "fp32" and s["memory_budget_mb"] is None


def test_set_threads_sets_one_interop_thread_in_a_fresh_process(tiny_cfg):
    code = ("import torch, sys; from fedfm.config import build_config; "
            "from fedfm.sim.world import set_threads, thread_settings; "
            "n = set_threads(build_config({'train': {'threads': 2}})); "
            "print(n, thread_settings())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, rest = out.stdout.split(" ", 1)
    assert n == "2" and "'threads': 2" in rest and "'interop_threads': 1" in rest
