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
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: the N workers share the cores, so
    # one BLAS/OpenMP thread each (torch reads these when it loads; processes a test starts
    # inherit them); a run in a single process keeps torch's default.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


# --- pytest -n N (pytest-xdist, `--dist loadfile` in pyproject): whole files go to workers ------
# Files whose module-scoped fixtures or Flower processes make them long go first, so no worker
# is left with one of them at the end while the others are idle (longest first; measured per-file
# CPU and wall in BENCHMARKS.md section 17). The rest keep their order. Only under xdist: a
# single-process run keeps pytest's collection order.
LONG_FILES = ("test_flower_deploy.py", "test_flower.py", "test_algorithm_matrix.py",
              "test_reliability.py", "test_bench.py", "test_hf_matrix.py", "test_checkpoint.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(LONG_FILES)}
        items.sort(key=lambda it: rank.get(it.path.name, len(rank)))  # stable


# --- per-test CPU time (opt-in): FEDFM_TEST_CPU=cpu.jsonl pytest ... -------------------------
# One JSON line per test: user+sys CPU of the pytest process and of its reaped children during
# setup+call+teardown (robust to machine load, unlike wall time), and the wall time. Processes
# that are not reaped by the test (Flower's grandchildren) are not counted.
_CPU_LOG = os.environ.get("FEDFM_TEST_CPU")

if _CPU_LOG:
    import json
    import resource
    import time

    def _cpu() -> tuple[float, float]:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        (s0, c0), w0 = _cpu(), time.perf_counter()
        yield
        (s1, c1), w1 = _cpu(), time.perf_counter()
        row = {"test": item.nodeid, "cpu_s": round(s1 - s0, 3),
               "children_cpu_s": round(c1 - c0, 3), "wall_s": round(w1 - w0, 3),
               "worker": os.environ.get("PYTEST_XDIST_WORKER"), "end": round(time.time(), 1)}
        with open(_CPU_LOG, "a") as fh:
            fh.write(json.dumps(row) + "\n")
