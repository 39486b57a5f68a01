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
