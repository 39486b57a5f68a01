"""Simulated Byzantine clients, for tests and benchmarks of robust aggregation and validation.

`Byzantine(algorithm, clients, kind)` wraps an algorithm (composition: every other method is the
wrapped one's); the chosen clients run the honest client update, then poison what they send:
  scale     θ' = θ_t + s · (θ - θ_t)          (s = -10: a sign-flipped, 10x boosted update)
  random    θ' = θ_t + ε,  ε ~ N(0, σ²)        (σ = `sigma`; seeded by the client's ctx.seed)
  nan       θ' with one NaN                    (validation must reject it)
θ_t is the task's tensor (the reference the client started from), 0 if the task has none.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.transport.messages import ClientTask, ClientUpdate

ATTACKS = ("scale", "random", "nan")


class Byzantine:
    def __init__(self, algorithm, clients: set[int], kind: str = "scale", scale: float = -10.0,
                 sigma: float = 1.0):
        if kind not in ATTACKS:
            raise ValueError(f"attack kind must be one of {ATTACKS}, not {kind!r}")
        self.inner, self.clients, self.kind = algorithm, set(clients), kind
        self.scale, self.sigma = scale, sigma

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def client_update(self, task: ClientTask, model, data, memory: ClientMemory,
                      ctx: ClientContext) -> ClientUpdate:
        honest = self.inner.client_update(task, model, data, memory, ctx)
        if task.client_id not in self.clients:
            return honest
        gen = torch.Generator().manual_seed(ctx.seed ^ 0xBAD)
        return replace(honest, tensors={k: self._poison(v, task.tensors.get(k), gen)
                                        for k, v in sorted(honest.tensors.items())})

    def _poison(self, theta: torch.Tensor, ref: torch.Tensor | None,
                gen: torch.Generator) -> torch.Tensor:
        base = ref if ref is not None and ref.shape == theta.shape else torch.zeros_like(theta)
        if self.kind == "scale":
            return base + self.scale * (theta - base)
        if self.kind == "random":
            return base + torch.randn(theta.shape, generator=gen, dtype=theta.dtype) * self.sigma
        out = theta.clone()
        out.view(-1)[0] = float("nan")
        return out


def run_attacked(cfg, attackers: set[int] = frozenset(), kind: str = "scale",
                 **attack_kw) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Run `cfg` in memory (no run folder) with `attackers` poisoning their uploads; returns
    (metric rows, final global tensors)."""
    from fedfm.sim.runner import EmbeddedRunner
    from fedfm.sim.world import build_world, set_threads

    set_threads(cfg)
    world = build_world(cfg)
    if attackers:
        world.algorithm = Byzantine(world.algorithm, set(attackers), kind, **attack_kw)
    world.algorithm.init_server(world.model)
    runner = EmbeddedRunner(world)
    rows = [runner.run_round(rnd) for rnd in range(cfg.rounds)]
    return rows, world.algorithm.global_tensors()
