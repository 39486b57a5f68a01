"""The widths that fit a client's budget, for any cost model with `spec` (per-block `heads`,
`ffn`, `num_layers`), `unit`, `cost(w)` and `fraction(w)` (models/hf_raffm.HFCost: params,
flops or memory of every registered family, MiniLM's BERT included).

Sizing rules:
    largest  the same (heads, FFN) in every block, on the balanced path h/H ≈ f/F: among head
             counts, the one maximising min(h/H, f*/F) where f* is the widest FFN that still
             fits; deterministic. Exports use this (vanilla configs need uniform widths).
    sample   RaFFM's rejection sampling: per block, heads and FFN ratios drawn from
             {1/4, 1/2, 3/4, 1}; configurations over budget are rejected (falls back to
             `largest` after `tries`).
"""

from __future__ import annotations

import math

import torch

from fedfm.core.errors import ConfigError
from fedfm.models.elastic import Widths

RATIOS = (0.25, 0.5, 0.75, 1.0)


def _widest_ffn(cm, heads: int, cap: float) -> int | None:
    """Largest uniform FFN width f in [1, F] with cost(h, f) <= cap, None if even f=1 is over."""
    layers, full_f = cm.spec.num_layers, max(cm.spec.ffn)
    fits = lambda f: cm.cost(Widths.uniform(layers, heads, f)) <= cap  # noqa: E731
    if not fits(1):
        return None
    lo, hi = 1, full_f
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def largest_uniform(cm, budget: float) -> Widths:
    """Uniform widths with cost <= budget · full cost, balanced between heads and FFN."""
    full_h, full_f = max(cm.spec.heads), max(cm.spec.ffn)
    cap = budget * cm.cost(Widths.of(cm.spec)) * (1 + 1e-12)
    best, best_key = None, None
    for h in range(full_h, 0, -1):
        f = _widest_ffn(cm, h, cap)
        if f is None:
            continue
        key = (min(h / full_h, f / full_f), h * f)
        if best_key is None or key > best_key:
            best, best_key = Widths.uniform(cm.spec.num_layers, h, f), key
    if best is None:
        smallest = cm.fraction(Widths.uniform(cm.spec.num_layers, 1, 1))
        raise ConfigError(f"a budget of {budget:g} ({cm.unit}) is below the smallest subnetwork "
                          f"(1 head, 1 FFN neuron per block = {smallest:.3f} of the full model).")
    return best


def sample_fitting(cm, budget: float, generator: torch.Generator,
                   tries: int = 200) -> Widths:
    """RaFFM-style: sample per-block width ratios, reject those over budget."""
    cap = budget * cm.cost(Widths.of(cm.spec)) * (1 + 1e-12)
    s = cm.spec
    for _ in range(tries):
        r = torch.randint(len(RATIOS), (2, s.num_layers), generator=generator).tolist()
        heads = tuple(max(1, math.ceil(RATIOS[i] * h)) for i, h in zip(r[0], s.heads))
        ffn = tuple(max(1, math.ceil(RATIOS[i] * f)) for i, f in zip(r[1], s.ffn))
        w = Widths(heads, ffn)
        if cm.cost(w) <= cap:
            return w
    return largest_uniform(cm, budget)


def choose_widths(cm, budget: float, rule: str = "largest",
                  generator: torch.Generator | None = None) -> Widths:
    if rule == "largest":
        return largest_uniform(cm, budget)
    if rule == "sample":
        return sample_fitting(cm, budget, generator or torch.Generator().manual_seed(0))
    raise ConfigError(f"Unknown sizing rule '{rule}'. Valid: largest, sample.")
