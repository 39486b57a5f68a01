"""HeteroFL (Diao, Ding, Tarokh 2021) as the baseline RaFFM is measured against.

Each client trains a static-width prefix of the model fitted to its tier's budget (the same
`largest` sizing rule as RaFFM), with no salient-parameter reordering: the first heads and FFN
neurons of the checkpoint's own order, every round. Aggregation is the same coverage-normalised
per-entry mean:  θ[e] = Σ_{k ∋ e} n_k θ_k[e] / Σ_{k ∋ e} n_k,  untouched entries kept.
(HeteroFL's static batch-norm and output scaler have no counterpart in a LayerNorm BERT.)
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.algorithms import registry
from fedfm.algorithms.env import Env
from fedfm.algorithms.raffm import AGGREGATION, RaFFM, RaFFMOptions, elastic_capabilities
from fedfm.core.errors import ConfigError


@dataclass(frozen=True)
class HeteroFLOptions:
    """[heterofl]: aggregation = coverage | all_clients."""

    aggregation: str = "coverage"

    def check(self) -> None:
        if self.aggregation not in AGGREGATION:
            raise ConfigError(f"heterofl.aggregation must be one of {', '.join(AGGREGATION)}, "
                              f"not '{self.aggregation}'.")


def build(opts: HeteroFLOptions, env: Env) -> RaFFM:
    raffm_opts = RaFFMOptions(spp=False, sizing="largest", aggregation=opts.aggregation)
    return RaFFM(raffm_opts, env, name="heterofl")


registry.register(
    "heterofl", build, HeteroFLOptions,
    "HeteroFL: static-width prefix subnetworks per tier (no SPP), coverage-normalised merge",
    capabilities=lambda opts: elastic_capabilities("heterofl", opts.aggregation),
)
