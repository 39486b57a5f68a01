"""Personalised accuracy that does not swing on tiny clients (issue #19).

Each evaluated client k reports (correct_k, n_k) on its own test split; a_k = correct_k / n_k.

    acc_personal_mean      = (1/K) Σ_k a_k               (client mean: every client counts once)
    acc_personal_weighted  = Σ_k correct_k / Σ_k n_k     (example-weighted: tiny clients count little)
    acc_personal_p10       = 10th percentile of {a_k}    (linear interpolation: the weak tail)

Clients whose test split holds fewer than `data.min_client_test` examples are not evaluated and
not counted (they still train); summary.json names how many (`personal_excluded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedfm.core.errors import ConfigError

KEYS = ("acc_personal_mean", "acc_personal_weighted", "acc_personal_p10")


def eligible_clients(test_sizes: Sequence[int], min_test: int) -> list[int]:
    """Ids of the clients evaluated for personalised accuracy."""
    ids = [k for k, n in enumerate(test_sizes) if n >= max(min_test, 1)]
    if not ids and min_test > 0:
        raise ConfigError(
            f"data.min_client_test = {min_test} excludes every client (largest client test split: "
            f"{max(test_sizes, default=0)} examples); lower it or raise data.client_test_fraction.")
    return ids


def personal_metrics(results: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """[(correct_k, n_k)] -> the three personalised accuracies (None when nothing was evaluated)."""
    pairs = [(c, n) for c, n in results if n > 0]
    if not pairs:
        return dict.fromkeys(KEYS)
    accs = np.array([c / n for c, n in pairs], dtype=np.float64)
    return {"acc_personal_mean": float(accs.mean()),
            "acc_personal_weighted": sum(c for c, _ in pairs) / sum(n for _, n in pairs),
            "acc_personal_p10": float(np.percentile(accs, 10))}
