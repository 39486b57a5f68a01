"""What `fedfm export` measures on an export: accuracy on the global test split, latency per example."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from fedfm.algorithms.training import count_correct
from fedfm.core.schema import RunConfig


@torch.inference_mode()
def latencies(forwards: dict[str, Any], ids: torch.Tensor, mask: torch.Tensor,
              repeats: int) -> dict[str, float]:
    """Median seconds per example of each forward, timed interleaved (same load for all)."""
    times: dict[str, list[float]] = {k: [] for k in forwards}
    for f in forwards.values():
        f(ids, mask)  # warm-up
    for _ in range(repeats):
        for name, f in forwards.items():
            t0 = time.perf_counter()
            f(ids, mask)
            times[name].append((time.perf_counter() - t0) / ids.shape[0])
    return {k: statistics.median(v) for k, v in times.items()}


def accuracy_of(predict, split, cfg: RunConfig) -> float:
    c, n = count_correct(predict, split, cfg.eval.batch_size, "fp32")
    return c / max(n, 1)
