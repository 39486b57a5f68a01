"""Client resource profiles: each client gets a budget, a fraction of the full model's cost.

Config (`[resources]`):
    unit = "params"                     # what the budget limits: params | memory | flops
    tiers = {small = 0.3, medium = 0.6, large = 1.0}     # tier -> budget fraction
    proportions = {small = 0.3, medium = 0.4, large = 0.3}  # tier -> share of clients
    per_client = [0.5, 1.0, ...]        # or: one explicit fraction per client (wins over tiers)
Without tiers every client has budget 1.0 (tier "full"). Tier counts use largest remainders of
`proportion · K`; which client gets which tier is a seeded shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedfm.core.errors import ConfigError

UNITS = ("params", "memory", "flops")


@dataclass(frozen=True)
class ResourcesConfig:
    unit: str = "params"
    tiers: dict[str, float] = field(default_factory=dict)
    proportions: dict[str, float] = field(default_factory=dict)
    per_client: tuple[float, ...] = ()

    def check(self, num_clients: int) -> None:
        if self.unit not in UNITS:
            raise ConfigError(f"resources.unit must be one of {', '.join(UNITS)}, not '{self.unit}'.")
        for name, frac in {**self.tiers, **{f"per_client[{i}]": v for i, v in
                                           enumerate(self.per_client)}}.items():
            if not 0 < frac <= 1:
                raise ConfigError(f"resources budget '{name}' = {frac} must be in (0, 1].")
        if self.per_client and len(self.per_client) != num_clients:
            raise ConfigError(f"resources.per_client has {len(self.per_client)} values for "
                              f"{num_clients} clients.")
        unknown = set(self.proportions) - set(self.tiers)
        if unknown:
            raise ConfigError(f"resources.proportions names tiers not in resources.tiers: "
                              f"{', '.join(sorted(unknown))}.")
        if self.tiers and any(v < 0 for v in self.proportions.values()):
            raise ConfigError("resources.proportions must be >= 0.")


@dataclass(frozen=True)
class ClientProfile:
    client_id: int
    tier: str
    budget: float  # fraction of the full model's cost in `unit`
    unit: str


def _tier_counts(props: dict[str, float], k: int) -> dict[str, int]:
    total = sum(props.values())
    exact = {t: p / total * k for t, p in props.items()}
    counts = {t: int(np.floor(v)) for t, v in exact.items()}
    by_remainder = sorted(exact, key=lambda t: exact[t] - counts[t], reverse=True)
    for t in by_remainder[: k - sum(counts.values())]:
        counts[t] += 1
    return counts


def client_profiles(res: ResourcesConfig, num_clients: int, seed: int) -> list[ClientProfile]:
    """One profile per client, deterministic in (res, num_clients, seed)."""
    res.check(num_clients)
    if res.per_client:
        return [ClientProfile(i, "custom", float(b), res.unit) for i, b in enumerate(res.per_client)]
    if not res.tiers:
        return [ClientProfile(i, "full", 1.0, res.unit) for i in range(num_clients)]
    props = res.proportions or {t: 1.0 for t in res.tiers}
    tiers = [t for t, n in sorted(_tier_counts(props, num_clients).items()) for _ in range(n)]
    order = np.random.default_rng(seed).permutation(num_clients)
    return [ClientProfile(int(c), tiers[i], res.tiers[tiers[i]], res.unit)
            for i, c in sorted(enumerate(order), key=lambda x: x[1])]
