"""Aggregation rules for every algorithm that averages client tensors ([aggregation] method).

Robust rules see each client's EFFECTIVE update: a LoRA pair (`p.lora_A` (r, in), `p.lora_B`
(out, r)) is compared as the product E_p = B_p · A_p (out, in), not as its factors (whose
coordinates are not comparable across clients: B·A = (B·M)(M⁻¹·A)); other tensors as they are.
Robust rules are translation-invariant, so comparing θ_k equals comparing θ_k - θ_global.

  mean          θ = Σ_k n_k θ_k / Σ_k n_k on the uploaded tensors (FedAvg; the default path)
  median        E = coordinate-wise median_k E_k (mean of the two middle values for even n)
  trimmed_mean  E = per coordinate, the mean of E_k after dropping ⌊β·n⌋ lowest and highest
  krum          score_k = Σ of the n-f-2 smallest ||E_k - E_j||² (j ≠ k); θ = θ_argmin (Blanchard
                et al. 2017)
  multi_krum    θ = FedAvg over the m lowest-scoring clients (m = n - f by default)
median / trimmed_mean return a new product E*_p; it is re-factorised to the pair's rank r by
truncated SVD (Eckart–Young best rank-r approximation): E*_p ≈ U_r S_r V_rᵀ, B = U_r S_r / c,
A = c · V_rᵀ with c = mean_k ||A_k||_F / √r, so A keeps the clients' scale and training continues.

`aggregate_updates(cfg, rnd, updates, reference)` is what an algorithm calls: robust rule or
mean, plus DP-FedAvg when `[dp] enabled` (fedfm.privacy).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from fedfm.algorithms.training import weighted_mean
from fedfm.reliability import AggregationConfig

log = logging.getLogger("fedfm")

Tensors = dict[str, torch.Tensor]


def lora_pairs(keys) -> list[str]:
    """Prefixes p with both `p.lora_A` and `p.lora_B` among the keys."""
    keys = set(keys)
    return sorted(k[: -len(".lora_A")] for k in keys
                  if k.endswith(".lora_A") and k[: -len(".lora_A")] + ".lora_B" in keys)


def effective(tensors: Tensors) -> Tensors:
    """LoRA pairs -> their product B·A under the key `p` (float64); other tensors as they are
    (float32: a fully fine-tuned model's stacked copies stay affordable)."""
    pairs = lora_pairs(tensors)
    paired = {f"{p}.lora_{x}" for p in pairs for x in "AB"}
    out = {p: tensors[f"{p}.lora_B"].double() @ tensors[f"{p}.lora_A"].double() for p in pairs}
    out.update({k: v.float() for k, v in tensors.items() if k not in paired})
    return out


def coordinate_median(stack: torch.Tensor) -> torch.Tensor:
    """(n, ...) -> (...): per-coordinate median, the mean of the two middle values for even n."""
    s = stack.movedim(0, -1).contiguous().sort(dim=-1).values  # (..., n): last dim sorts fastest
    n = s.shape[-1]
    return s[..., (n - 1) // 2] if n % 2 else 0.5 * (s[..., n // 2 - 1] + s[..., n // 2])


def trimmed_mean(stack: torch.Tensor, beta: float) -> torch.Tensor:
    """(n, ...) -> (...): per coordinate, mean after dropping ⌊β·n⌋ values at each end."""
    n = stack.shape[0]
    k = min(int(math.floor(beta * n)), (n - 1) // 2)
    return stack.movedim(0, -1).contiguous().sort(dim=-1).values[..., k: n - k].mean(-1)


def refactor(product: torch.Tensor, a_like: Sequence[torch.Tensor],
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """E (out, in) -> (A (r, in), B (out, r)) with B·A = best rank-r approximation of E."""
    r = a_like[0].shape[0]
    work = product.to(torch.float32 if dtype == torch.float32 else torch.float64)
    u, s, vh = torch.linalg.svd(work, full_matrices=False)  # (out,k) (k,) (k,in)
    c = sum(float(a.double().norm()) for a in a_like) / len(a_like) / math.sqrt(r)
    c = c if c > 0 else 1.0
    a = c * vh[:r]  # (r, in)
    b = u[:, :r] * s[:r] / c  # (out, r)
    return a.to(dtype), b.to(dtype)


def coordinatewise(sets: Sequence[Tensors], rule) -> Tensors:
    """Apply a per-coordinate rule to the effective updates; re-factorise LoRA pairs."""
    views = [effective(t) for t in sets]
    template = sets[0]
    pairs = set(lora_pairs(template))
    out: Tensors = {}
    for key in views[0]:
        agg = rule(torch.stack([v[key] for v in views]))
        if key in pairs:
            a, b = refactor(agg, [t[f"{key}.lora_A"] for t in sets],
                            template[f"{key}.lora_A"].dtype)
            out[f"{key}.lora_A"], out[f"{key}.lora_B"] = a, b
        else:
            out[key] = agg.to(template[key].dtype)
    return {k: out[k] for k in template}


def pairwise_sq_distances(sets: Sequence[Tensors]) -> torch.Tensor:
    """(n, n) squared L2 distances between the clients' effective updates, key by key."""
    views = [effective(t) for t in sets]
    n = len(sets)
    d = torch.zeros(n, n, dtype=torch.float64)
    for key in views[0]:
        x = torch.stack([v[key].reshape(-1) for v in views]).double()  # (n, numel)
        d += torch.cdist(x, x) ** 2
    return d


def krum_scores(dist: torch.Tensor, byzantine: int) -> torch.Tensor:
    """score_k = Σ of the n - f - 2 smallest distances from k to the others (at least 1)."""
    n = dist.shape[0]
    m = max(1, n - byzantine - 2)
    if n - byzantine - 2 < 1:
        log.warning("krum: %d updates cannot tolerate byzantine=%d (needs n > f + 2); "
                    "scoring with the nearest neighbour only", n, byzantine)
    others = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype))
    return others.sort(dim=1).values[:, : min(m, n - 1)].sum(1) if n > 1 else torch.zeros(1)


def robust_aggregate(sets: Sequence[Tensors], weights: Sequence[float],
                     cfg: AggregationConfig) -> tuple[Tensors, dict[str, Any]]:
    """Combine client tensors by `cfg.method`; returns (tensors, info: selected indices...)."""
    if cfg.method == "mean":
        return weighted_mean(sets, weights), {}
    if cfg.method == "median":
        return coordinatewise(sets, coordinate_median), {}
    if cfg.method == "trimmed_mean":
        return coordinatewise(sets, lambda s: trimmed_mean(s, cfg.trim_fraction)), {}
    scores = krum_scores(pairwise_sq_distances(sets), cfg.byzantine)
    order = [int(i) for i in scores.argsort(stable=True)]
    m = 1 if cfg.method == "krum" else (cfg.multi_krum_m or len(sets) - cfg.byzantine)
    chosen = sorted(order[: max(1, min(m, len(sets)))])
    agg = weighted_mean([sets[i] for i in chosen], [weights[i] for i in chosen])
    return agg, {"selected": chosen}


def aggregate_updates(cfg, rnd: int, updates: Sequence, reference: Tensors | None = None
                      ) -> tuple[Tensors, dict[str, Any]]:
    """What an averaging algorithm calls in aggregate_train: `cfg` is the RunConfig, `updates`
    the validated ClientUpdates, `reference` the tensors the clients started from (needed by DP).
    Returns (new tensors, metrics for the round row)."""
    sets = [dict(u.tensors) for u in updates]
    weights = [u.num_examples for u in updates]
    if cfg.dp.enabled:
        from fedfm.privacy import dp_mean

        return dp_mean(cfg, rnd, sets, reference or {}, len(updates))
    agg, info = robust_aggregate(sets, weights, cfg.aggregation)
    metrics: dict[str, Any] = {}
    if "selected" in info:
        metrics["agg_selected"] = [updates[i].client_id for i in info["selected"]]
    return agg, metrics
