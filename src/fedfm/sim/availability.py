"""Client availability (dropouts, stragglers) and the server's inbox of one round's updates.

Availability ([availability]), every draw seeded by (seed, round, client) — never global state:
  dropped(t, k)  ⇔  u_{t,k} < drop_prob,            u ~ U(0, 1)
  latency(t, k)  =  tiers[tier(k)] · exp(jitter · z_{t,k}),  z ~ N(0, 1)
  late(t, k)     ⇔  deadline > 0 and latency(t, k) > deadline
A dropped client never answers (no compute, no bytes). A late client trains, but its update only
arrives in round t+1, where validation rejects it as stale. A round aggregates what arrived and
validated; if fewer than ⌈min_completion · |S_t|⌉ did, aggregation is skipped with a log line.
Tier of each client: a seeded shuffle over counts ∝ `proportions` (largest remainders).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedfm.core.reliability import AvailabilityConfig, ValidationConfig
from fedfm.core.resources import _tier_counts
from fedfm.core.seeds import derive_seed
from fedfm.transport.messages import ClientTask, ClientUpdate, decode, encode
from fedfm.transport.validation import Rejection, expected_schema, validate_update

log = logging.getLogger("fedfm")
DROP_STREAM, LATENCY_STREAM, TIER_STREAM = 0xD0, 0x1A7, 0x71E


class Availability:
    """Which sampled clients drop out or straggle in a round (deterministic per seed)."""

    def __init__(self, cfg: AvailabilityConfig, num_clients: int, seed: int):
        self.cfg, self.seed = cfg, seed
        self.tier = self._tiers(num_clients)

    def _tiers(self, k: int) -> list[str | None]:
        if not self.cfg.tiers:
            return [None] * k
        props = self.cfg.proportions or {t: 1.0 for t in self.cfg.tiers}
        names = [t for t, n in sorted(_tier_counts(props, k).items()) for _ in range(n)]
        order = np.random.default_rng(derive_seed(self.seed, TIER_STREAM)).permutation(k)
        tier: list[str | None] = [None] * k
        for i, c in enumerate(order):
            tier[int(c)] = names[i]
        return tier

    def dropped(self, rnd: int, cid: int) -> bool:
        if self.cfg.drop_prob <= 0:
            return False
        u = np.random.default_rng(derive_seed(self.seed, rnd, cid, DROP_STREAM)).random()
        return bool(u < self.cfg.drop_prob)

    def latency(self, rnd: int, cid: int) -> float:
        t = self.tier[cid]
        if t is None:
            return 0.0
        z = np.random.default_rng(derive_seed(self.seed, rnd, cid, LATENCY_STREAM)).normal()
        return float(self.cfg.tiers[t] * math.exp(self.cfg.jitter * z))

    def late(self, rnd: int, cid: int) -> bool:
        return self.cfg.deadline > 0 and self.latency(rnd, cid) > self.cfg.deadline

    def needed(self, sampled: int) -> int:
        return math.ceil(self.cfg.min_completion * sampled - 1e-9)


@dataclass
class RoundTally:
    dropped: int = 0
    late: int = 0
    stale: int = 0
    rejected: int = 0
    clipped: int = 0
    reasons: list[str] = field(default_factory=list)


class Inbox:
    """The server side of one run's uploads: drops, defers stragglers, validates, counts.

    `pending` holds stragglers' (task blob, update blob) until the next round (checkpointed).
    """

    def __init__(self, cfg, algorithm, num_clients: int):
        self.algo = algorithm
        self.vcfg: ValidationConfig = cfg.validation
        self.avail = Availability(cfg.availability, num_clients, cfg.seed)
        self.active = cfg.availability.active
        self.pending: list[tuple[bytes, bytes]] = []
        self.tally = RoundTally()

    def open(self, rnd: int, tasks: list[ClientTask]) -> list[ClientTask]:
        """Start round `rnd`: reject last round's late arrivals; return the tasks whose
        clients did not drop out."""
        self.tally = RoundTally()
        for task_blob, update_blob in self.pending:
            self._check(decode(task_blob), update_blob, rnd, late=True)
        self.pending = []
        gone = {t.client_id for t in tasks if self.avail.dropped(rnd, t.client_id)}
        for cid in sorted(gone):
            log.info("round %d: client %d dropped out", rnd, cid)
        self.tally.dropped = len(gone)
        return [t for t in tasks if t.client_id not in gone]

    def receive(self, rnd: int, task: ClientTask, update: ClientUpdate | bytes,
                nbytes: int | None = None) -> ClientUpdate | None:
        """One client's answer to `task`: None if it is late (deferred) or rejected."""
        if self.avail.late(rnd, task.client_id):
            blob = update if isinstance(update, bytes) else encode(update)
            self.pending.append((encode(task), blob))
            self.tally.late += 1
            log.info("round %d: client %d missed the deadline (latency %.2f > %.2f)", rnd,
                     task.client_id, self.avail.latency(rnd, task.client_id),
                     self.avail.cfg.deadline)
            return None
        return self._check(task, update, rnd, nbytes=nbytes)

    def _check(self, task: ClientTask, update, rnd: int, late: bool = False,
               nbytes: int | None = None) -> ClientUpdate | None:
        verdict = validate_update(update, task, self.vcfg, expected_schema(self.algo, task),
                                  current_round=rnd, nbytes=nbytes)
        check = getattr(self.algo, "check_metrics", None)  # metrics the server will read
        why = check(task, verdict.update) if check and verdict.ok else None
        if why:
            verdict = replace(verdict, update=None, rejection=Rejection(task.client_id, why))
        if verdict.rejection is not None:
            r = verdict.rejection
            self.tally.rejected += 1
            self.tally.stale += r.reason.startswith("stale")
            self.tally.reasons.append(str(r))
            log.warning("round %d: rejected update of client %d%s: %s", rnd, r.client_id,
                        f" key '{r.key}'" if r.key else "", r.reason)
            return None
        self.tally.clipped += verdict.clipped
        return verdict.update

    def complete(self, rnd: int, arrived: int, sampled: int) -> bool:
        need = self.avail.needed(sampled)
        if self.avail.cfg.min_completion <= 0 or arrived >= max(need, 1):
            return True
        log.warning("round %d skipped: %d of %d sampled updates arrived and validated; "
                    "availability.min_completion=%.2f needs %d", rnd, arrived, sampled,
                    self.avail.cfg.min_completion, max(need, 1))
        return False

    def metrics(self) -> dict[str, Any]:
        t = self.tally
        row: dict[str, Any] = {"rejected": t.rejected}
        if self.active:
            row.update({"dropped": t.dropped, "late": t.late, "stale": t.stale})
        if self.vcfg.norm_bound > 0:
            row["clipped"] = t.clipped
        return row
