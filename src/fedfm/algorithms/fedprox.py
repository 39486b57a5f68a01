"""FedProx (Li et al. 2020): FedAvg whose client objective adds a proximal term.

Client:  min_θ  CE(f(x; θ), y) + (mu / 2) · ||θ - θ_t||²,   θ_t = the round's global tensors.
The term lives inside the client update (not left to the user); aggregation is FedAvg's.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.algorithms import registry
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.fedavg import FedAvg
from fedfm.core.errors import ConfigError


@dataclass(frozen=True)
class FedProxOptions:
    mu: float = 0.01

    def check(self) -> None:
        if self.mu < 0:
            raise ConfigError(f"fedprox.mu must be >= 0, got {self.mu}.")


registry.register(
    "fedprox", lambda opts, env: FedAvg(env, name="fedprox", mu=opts.mu),
    FedProxOptions, "FedAvg + proximal term (mu/2)||θ-θ_global||² in the client loss",
    capabilities=AVERAGING, tasks=("classify", "generate"), multitask=True, stateless=True,
)
