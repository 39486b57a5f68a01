"""Shared fixtures: tiny models and synthetic data, so the default suite runs in seconds."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fedfm.config import build_config  # noqa: E402


def tiny_raw(**over) -> dict:
    """A raw config for a seconds-long run: tiny random BERT, synthetic data, 4 clients."""
    raw = {
        "algorithm": "fedavg", "rounds": 2, "seed": 0,
        "model": {"name": "tiny-bert", "max_length": 16, "lora_rank": 4},
        "data": {"name": "synthetic", "partition": "dirichlet", "alpha": 0.5, "num_clients": 4},
        "train": {"batch_size": 16, "lr": 5e-3, "threads": 1},
    }
    for key, value in over.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(**over):
        over.setdefault("out", str(tmp_path / "run"))
        return build_config(tiny_raw(**over))

    return make


def assert_clean_run(summary: dict, rows: list[dict]) -> None:
    """What a clean run must show (replaces `0 <= acc <= 1`, which cannot fail): no upload or
    evaluation reply rejected, and the reported personalised accuracy is the mean of the
    clients' own accuracies, each a fraction of that client's test examples."""
    assert all(r.get("rejected", 0) == 0 and r.get("eval_rejected", 0) == 0 for r in rows)
    accs = [c["acc_personal"] for c in summary["clients"] if c.get("acc_personal") is not None]
    assert accs and summary["acc_personal_mean"] == pytest.approx(sum(accs) / len(accs))
    for c in summary["clients"]:
        n = c.get("n_test")
        if n and c.get("acc_personal") is not None:
            assert abs(c["acc_personal"] * n - round(c["acc_personal"] * n)) < 1e-6
