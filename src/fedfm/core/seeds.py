"""Seeds derived from (run seed, round, client, ...) — never a global manual_seed."""

from __future__ import annotations

import numpy as np


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends on every part (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def sample_clients(num_clients: int, fraction: float, min_clients: int, seed: int,
                   rnd: int) -> list[int]:
    """max(min_clients, round(fraction · K)) distinct clients, sorted, seeded by (seed, round)."""
    k = min(num_clients, max(min_clients, int(round(fraction * num_clients))))
    rng = np.random.default_rng(derive_seed(seed, rnd, 0x5A3))
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def sample_by_task(client_tasks: list[str], fraction: float, seed: int, rnd: int) -> list[int]:
    """Per task t with K_t clients: max(1, round(fraction · K_t)) of them, so every task trains
    every round (the FedMoE paper's "Enforced" sampling); seeded by (seed, round, task index)."""
    chosen: list[int] = []
    for i, t in enumerate(dict.fromkeys(client_tasks)):
        ids = [c for c, ct in enumerate(client_tasks) if ct == t]
        k = min(len(ids), max(1, int(round(fraction * len(ids)))))
        rng = np.random.default_rng(derive_seed(seed, rnd, 0x7A5, i))
        chosen += [ids[j] for j in rng.choice(len(ids), size=k, replace=False)]
    return sorted(int(c) for c in chosen)
