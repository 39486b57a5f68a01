"""randomMoE: FedMoE's baseline in the paper. The same MoE backbone, LoRA, per-client payloads
and modular aggregation as FedMoE, but each client's experts are a random subset (spread evenly
over blocks) of the size its memory budget allows (alpha · M_k, as FedMoE's search), with no
profiling stage and no expert recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.algorithms import registry
from fedfm.algorithms.fedmoe import MOE_CAPABILITIES, FedMoE, FedMoEOptions


@dataclass(frozen=True)
class RandomMoEOptions:
    num_experts: int = 8
    top_k: int = 2
    build: str = "moefy"
    expert_lora_rank: int = 8
    balance_coef: float = 0.01
    alpha: float = 0.9
    val_fraction: float = 0.2
    min_experts: int = 1
    budget_of: str = "experts"
    checkpoint: str | None = None

    def to_fedmoe(self) -> FedMoEOptions:
        return FedMoEOptions(
            num_experts=self.num_experts, top_k=self.top_k, build=self.build,
            expert_lora_rank=self.expert_lora_rank, balance_coef=self.balance_coef,
            profile_rounds=0, alpha=self.alpha, recommend=False, val_fraction=self.val_fraction,
            min_experts=self.min_experts, budget_of=self.budget_of, checkpoint=self.checkpoint)

    def check(self) -> None:
        self.to_fedmoe().check()


registry.register(
    "randommoe",
    lambda cfg, opts, nl, nc: FedMoE(cfg, (opts or RandomMoEOptions()).to_fedmoe(), nc,
                                     name="randommoe", planner="random"),
    RandomMoEOptions, "randomMoE: random expert subsets of FedMoE's memory budget (baseline)",
    capabilities=MOE_CAPABILITIES,
)
