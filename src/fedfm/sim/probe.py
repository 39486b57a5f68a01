"""Machine facts logged with every run: a fixed matmul's speed, threads, peak memory."""

from __future__ import annotations

import resource
import sys
import time

import torch


def matmul_gflops(n: int = 512, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an (n x n) @ (n x n) matmul (2n³ FLOPs each), best of `repeats`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024
