"""`[flower]`: options of the Flower runtime (`runtime = "flower"`). No flwr import here, so
the config schema can hold this section whether or not Flower is installed."""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.core.errors import ConfigError


@dataclass(frozen=True)
class FlowerConfig:
    """client_cpus: CPUs Ray reserves per simulated client (parallel clients = cores / this).
    reply_timeout_s: how long the server waits for a round's replies (missing = dropped).
    connect_timeout_s: how long the server waits for every client's SuperNode to connect
    (it logs which clients are still missing every 10 s, then stops with a message naming
    them; a SuperNode connects within seconds of starting, so 60 s is generous on one machine;
    raise it when nodes join over a slow network or start later).
    disk_cache: keep the frozen backbone + tokenised data on disk ($FEDFM_CACHE, default
    ~/.cache/fedfm) so fresh client processes skip tokenising and loading."""

    client_cpus: float = 1.0
    reply_timeout_s: float = 3600.0
    connect_timeout_s: float = 60.0
    disk_cache: bool = True

    def check(self) -> None:
        if self.client_cpus <= 0:
            raise ConfigError(f"flower.client_cpus must be > 0 (got {self.client_cpus}).")
        if self.reply_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError("flower.reply_timeout_s and flower.connect_timeout_s must be > 0.")
