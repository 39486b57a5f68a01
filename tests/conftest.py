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
