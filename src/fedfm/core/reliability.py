"""Config sections for reliability and security (issue #7). Each is a frozen dataclass field of
RunConfig; every option is off (or permissive) by default, so a plain run is unchanged.

[validation]    checks on every client update before aggregation (fedfm.transport.validation)
    max_update_bytes = 0        # byte cap checked before decoding; 0 = auto (expected bytes + slack)
    norm_bound = 0.0            # L2 bound on ||θ_k - θ_task||; 0 = off
    norm_action = "reject"      # reject | clip
    max_num_examples = 0        # upper bound on a claimed num_examples; 0 = no bound
[availability]  dropouts and stragglers in the simulator (fedfm.sim.availability)
    drop_prob = 0.3             # each sampled client drops out of a round with this probability
    tiers = {fast = 1.0, slow = 3.0}         # tier -> simulated latency (time units)
    proportions = {fast = 0.7, slow = 0.3}   # tier -> share of clients
    deadline = 2.0              # updates slower than this arrive late (next round: stale, rejected)
    min_completion = 0.5        # fraction of sampled clients whose updates must arrive, else skip
[aggregation]   how averaging algorithms combine updates (fedfm.algorithms.aggregation)
    method = "mean"             # mean | median | trimmed_mean | krum | multi_krum
    trim_fraction = 0.1         # trimmed_mean: fraction dropped at each end, per coordinate
    byzantine = 1               # krum / multi_krum: assumed number of attackers f
    multi_krum_m = 0            # multi_krum: clients kept; 0 = n - f
[dp]            DP-FedAvg: clip each client's delta to `clip`, add N(0, (σ·clip)²) (fedfm.algorithms.privacy)
    enabled = false, clip = 1.0, noise_multiplier = 1.0, delta = 1e-5
[checkpoint]    atomic checkpoint after every `every` rounds; `fedfm resume RUN_DIR` (sim.checkpoint)
    enabled = true (on by default; false opts out), every = 1, keep = 1 (the latest)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedfm.core.errors import ConfigError, choices

NORM_ACTIONS = ("reject", "clip")
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum")


def _require(rules: list[tuple[bool, str]]) -> None:
    for ok, message in rules:
        if not ok:
            raise ConfigError(message + ".")


@dataclass(frozen=True)
class ValidationConfig:
    max_update_bytes: int = 0
    norm_bound: float = 0.0
    norm_action: str = "reject"
    max_num_examples: int = 0

    def check(self, num_clients: int = 0) -> None:
        _require([
            (self.max_update_bytes >= 0, "validation.max_update_bytes must be >= 0 (0 = auto)"),
            (self.norm_bound >= 0, "validation.norm_bound must be >= 0 (0 = off)"),
            (self.norm_action in NORM_ACTIONS,
             f"validation.norm_action must be one of {choices(NORM_ACTIONS)}, "
             f"not '{self.norm_action}'"),
            (self.max_num_examples >= 0, "validation.max_num_examples must be >= 0 (0 = off)"),
        ])


@dataclass(frozen=True)
class AvailabilityConfig:
    drop_prob: float = 0.0
    tiers: dict[str, float] = field(default_factory=dict)
    proportions: dict[str, float] = field(default_factory=dict)
    deadline: float = 0.0
    jitter: float = 0.0
    min_completion: float = 0.0

    @property
    def active(self) -> bool:
        return self.drop_prob > 0 or bool(self.tiers) or self.min_completion > 0

    def check(self, num_clients: int = 0) -> None:
        _require([
            (0 <= self.drop_prob < 1, f"availability.drop_prob must be in [0, 1), got {self.drop_prob}"),
            (0 <= self.min_completion <= 1, "availability.min_completion must be in [0, 1]"),
            (self.deadline >= 0, "availability.deadline must be >= 0 (0 = no deadline)"),
            (self.jitter >= 0, "availability.jitter must be >= 0"),
            (all(v >= 0 for v in self.tiers.values()), "availability.tiers latencies must be >= 0"),
            (set(self.proportions) <= set(self.tiers),
             f"availability.proportions names tiers not in availability.tiers "
             f"({choices(set(self.proportions) - set(self.tiers))})"),
            (all(v >= 0 for v in self.proportions.values()), "availability.proportions must be >= 0"),
        ])


@dataclass(frozen=True)
class AggregationConfig:
    method: str = "mean"
    trim_fraction: float = 0.1
    byzantine: int = 1
    multi_krum_m: int = 0

    def check(self, num_clients: int = 0) -> None:
        _require([
            (self.method in AGGREGATORS,
             f"aggregation.method must be one of {choices(AGGREGATORS)}, not '{self.method}'"),
            (0 <= self.trim_fraction < 0.5, "aggregation.trim_fraction must be in [0, 0.5)"),
            (self.byzantine >= 0, "aggregation.byzantine must be >= 0"),
            (self.multi_krum_m >= 0, "aggregation.multi_krum_m must be >= 0 (0 = n - byzantine)"),
        ])


@dataclass(frozen=True)
class DPConfig:
    enabled: bool = False
    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def check(self, num_clients: int = 0) -> None:
        _require([
            (self.clip > 0, f"dp.clip must be > 0, got {self.clip}"),
            (self.noise_multiplier >= 0, "dp.noise_multiplier must be >= 0"),
            (0 < self.delta < 1, f"dp.delta must be in (0, 1), got {self.delta}"),
        ])


@dataclass(frozen=True)
class CheckpointConfig:
    enabled: bool = True  # on by default: `fedfm resume RUN_DIR` works after any crash
    every: int = 1
    keep: int = 1  # the latest only

    def check(self, num_clients: int = 0) -> None:
        _require([(self.every >= 1, "checkpoint.every must be >= 1"),
                  (self.keep >= 1, "checkpoint.keep must be >= 1")])


def check_reliability(cfg) -> None:
    """Check every issue-7 section of a RunConfig, and the rules between them."""
    for section in (cfg.validation, cfg.availability, cfg.aggregation, cfg.dp, cfg.checkpoint):
        section.check(cfg.data.num_clients)
    if cfg.dp.enabled and cfg.aggregation.method != "mean":
        raise ConfigError(f"dp.enabled needs aggregation.method = mean (the noise is calibrated "
                          f"to the clipped mean), not '{cfg.aggregation.method}'.")
