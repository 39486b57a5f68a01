"""randomMoE: FedMoE's baseline in the paper. The same MoE backbone, LoRA, per-client payloads
and modular aggregation as FedMoE, but each client's experts are a random subset (spread evenly
over blocks) of the size its memory budget allows (alpha · M_k, as FedMoE's search), with no
profiling stage and no expert recommendation.
"""

from __future__ import annotations

from dataclasses import asdict, field, fields, make_dataclass

from fedfm.algorithms import registry
from fedfm.algorithms.env import Env
from fedfm.algorithms.fedmoe import MOE_CAPABILITIES, FedMoE, FedMoEOptions

# FedMoE's options but what belongs to its profiling stage and recommendation (randomMoE has
# neither): the one list of fields, derived, never re-declared
PROFILE_ONLY = ("profile_rounds", "references", "patience", "recommend", "score",
                "profile_all_large", "fill_budget")


def _to_fedmoe(self) -> FedMoEOptions:
    """The FedMoE options randomMoE runs with: no profiling stage, no recommendation."""
    return FedMoEOptions(**asdict(self), profile_rounds=0, recommend=False)


def _check(self) -> None:
    self.to_fedmoe().check()


RandomMoEOptions = make_dataclass(
    "RandomMoEOptions",
    [(f.name, f.type, field(default=f.default)) for f in fields(FedMoEOptions)
     if f.name not in PROFILE_ONLY],
    frozen=True, namespace={"to_fedmoe": _to_fedmoe, "check": _check,
                            "__doc__": "[randommoe]: FedMoE's options minus PROFILE_ONLY."},
)
RandomMoEOptions.__module__ = __name__


def build(opts, env: Env) -> FedMoE:
    """FedMoE's machinery with a random plan (`planner = "random"`)."""
    return FedMoE((opts or RandomMoEOptions()).to_fedmoe(), env, name="randommoe",
                  planner="random")


registry.register(
    "randommoe", build, RandomMoEOptions,
    "randomMoE: random expert subsets of FedMoE's memory budget (baseline)",
    capabilities=MOE_CAPABILITIES, tasks=("classify", "generate"), multitask=True,
)
