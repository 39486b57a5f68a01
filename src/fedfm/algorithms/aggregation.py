"""Aggregation rules for every algorithm that averages client tensors ([aggregation] method).

Robust rules see each client's EFFECTIVE update: a LoRA pair (`p.lora_A` (r, in), `p.lora_B`
(out, r)) is compared as the product E_p = B_p · A_p (out, in), not as its factors (whose
coordinates are not comparable across clients: B·A = (B·M)(M⁻¹·A)); other tensors as they are.
Robust rules are translation-invariant, so comparing θ_k equals comparing θ_k - θ_global.

  mean          the masked, weighted mean (`masked_mean`): FedAvg θ = Σ_k n_k θ_k / Σ_k n_k when
                every client uploads every entry (the default path)
  median        E = coordinate-wise median_k E_k (mean of the two middle values for even n)
  trimmed_mean  E = per coordinate, the mean of E_k after dropping ⌊β·n⌋ lowest and highest
  krum          score_k = Σ of the n-f-2 smallest ||E_k - E_j||² (j ≠ k); θ = θ_argmin (Blanchard
                et al. 2017)
  multi_krum    θ = FedAvg over the m lowest-scoring clients (m = n - f by default)
median / trimmed_mean return a new product E*_p; it is re-factorised to the pair's rank r by
truncated SVD (Eckart–Young best rank-r approximation): E*_p ≈ U_r S_r V_rᵀ, B = U_r S_r / c,
A = c · V_rᵀ with c = mean_k ||A_k||_F / √r, so A keeps the clients' scale and training continues.

`aggregate_updates(cfg, rnd, updates, reference)` / `masked_aggregate(...)` is what an algorithm
calls: robust rule or mean, plus DP-FedAvg when `[dp] enabled` (fedfm.algorithms.privacy). `masked_mean` is
fedfm's one weighted mean (FedAvg, partial uploads, multi-task heads, SAL blocks, experts, elastic
prefix slices all go through it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from fedfm.core.errors import PayloadError
from fedfm.core.reliability import AggregationConfig
from fedfm.models.elastic import prefix_index

log = logging.getLogger("fedfm")

Tensors = dict[str, torch.Tensor]


DENOMINATORS = ("coverage", "all_clients")


def masked_mean(sets: Sequence[Tensors], weights: Sequence[float],
                reference: Tensors | None = None, denominator: str = "coverage") -> Tensors:
    """The masked, weighted mean, element by element over every uploaded key:

        θ[e] = Σ_i w_i m_i[e] x_i[e] / Σ_i w_i m_i[e]     (denominator = "coverage")
        θ[e] = Σ_i w_i m_i[e] x_i[e] / Σ_i w_i            (denominator = "all_clients", the RaFFM
                                                           authors' divide-by-all)
        θ[e] = reference[e]                              where no client covered e (Σ_i m_i[e] = 0)

    m_i[e] = 1 when client i's upload covers element e: it sent the key (partial uploads: FedMS/SAL
    blocks, a task's head, the experts a client holds) and e lies in the prefix its tensor spans
    (elastic subnetworks upload prefix slices of the server's `reference` tensor). With full
    uploads from everyone this is FedAvg, Σ_i w_i x_i / Σ_i w_i. Computed in float64: a key every
    holder uploads whole as Σ_i x_i · (w_i / Σ_j w_j) (the arithmetic of fedfm's former FedAvg
    mean), a prefix-sliced key as the numerator over the denominator (that of the former
    coverage mean), so results are bit-identical to both. Returned at the full (reference) shape
    in the reference's dtype (else the first upload's), keys in first-upload order."""
    if not sets:
        raise ValueError("nothing to average")
    if denominator not in DENOMINATORS:
        raise ValueError(f"unknown denominator '{denominator}'")
    reference = reference or {}
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to > 0")
    out = {}
    for key in dict.fromkeys(k for s in sets for k in s):
        held = [(s[key], float(w)) for s, w in zip(sets, weights) if key in s]
        shape = full_shape(key, [t for t, _ in held], reference)
        dtype = reference[key].dtype if key in reference else held[0][0].dtype
        if all(tuple(t.shape) == shape for t, _ in held):  # every holder covers every element
            den = total if denominator == "all_clients" else sum(w for _, w in held)
            acc = torch.zeros(shape, dtype=torch.float64)
            for t, w in held:
                acc += t.to(torch.float64) * (w / den)
            out[key] = acc.to(dtype)
        else:
            out[key] = _sliced_mean(key, held, shape, reference, total, denominator).to(dtype)
    return out


def _sliced_mean(key: str, held, shape: tuple[int, ...], reference: Tensors, total: float,
                 denominator: str) -> torch.Tensor:
    """`masked_mean` of one key whose uploads are prefix slices (m_i = the slice's span)."""
    num = torch.zeros(shape, dtype=torch.float64)
    den = torch.zeros(shape, dtype=torch.float64)
    for t, w in held:
        idx = prefix_index(shape, t, key)
        num[idx] += w * t.to(torch.float64)
        den[idx] += w
    covered = den > 0
    if denominator == "all_clients":
        den = torch.where(covered, total, 0.0)
    base = (reference[key].to(torch.float64) if key in reference
            else torch.zeros(shape, dtype=torch.float64))
    return torch.where(covered, num / den.clamp_min(1e-300), base)


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
        return masked_mean(sets, weights), {}
    if cfg.method == "median":
        return coordinatewise(sets, coordinate_median), {}
    if cfg.method == "trimmed_mean":
        return coordinatewise(sets, lambda s: trimmed_mean(s, cfg.trim_fraction)), {}
    chosen = krum_choose(pairwise_sq_distances(sets), cfg)
    agg = masked_mean([sets[i] for i in chosen], [weights[i] for i in chosen])
    return agg, {"selected": chosen}


def krum_choose(dist: torch.Tensor, cfg: AggregationConfig) -> list[int]:
    """Indices Krum (m = 1) or multi-Krum (m = multi_krum_m or n - f) selects from (n, n) d²."""
    n = dist.shape[0]
    order = [int(i) for i in krum_scores(dist, cfg.byzantine).argsort(stable=True)]
    m = 1 if cfg.method == "krum" else (cfg.multi_krum_m or n - cfg.byzantine)
    return sorted(order[: max(1, min(m, n))])


def aggregate_updates(cfg, rnd: int, updates: Sequence, reference: Tensors | None = None
                      ) -> tuple[Tensors, dict[str, Any]]:
    """What an averaging algorithm calls in aggregate_train: `cfg` is the RunConfig, `updates`
    the validated ClientUpdates, `reference` the tensors the clients started from (needed by DP
    and by partial uploads). Returns (new tensors, metrics for the round row)."""
    return masked_aggregate(cfg, rnd, [dict(u.tensors) for u in updates],
                            [u.num_examples for u in updates], reference,
                            client_ids=[u.client_id for u in updates])


def masked_aggregate(cfg, rnd: int, sets: Sequence[Tensors], weights: Sequence[float],
                     reference: Tensors | None = None, *, client_ids: Sequence[int] | None = None,
                     denominator: str = "coverage") -> tuple[Tensors, dict[str, Any]]:
    """THE aggregation of every averaging algorithm: `masked_mean` with the [aggregation] and
    [dp] hooks. Client k may upload any subset of the keys, and a tensor may
    be a prefix slice of the server's (`reference`) tensor of that name (elastic subnetworks):
      mean (coverage)     θ[e] = Σ_{k∋e} w_k θ_k[e] / Σ_{k∋e} w_k   (k∋e: k uploaded entry e)
      mean (all_clients)  θ[e] = Σ_{k∋e} w_k θ_k[e] / Σ_k w_k
      robust rule         applied per coverage region R = {e : holders(e) = H}: median /
                          trimmed mean per entry over H; Krum / multi-Krum choose among H on all
                          regions sharing H (LoRA pairs compared as B·A, see `robust_aggregate`)
      dp                  DP-FedAvg over each client's whole upload (fedfm.algorithms.privacy.dp_masked_mean)
    Returns (tensors for every uploaded key, full shape, entries nobody held = reference;
    metrics). Uploads are assumed validated (schema checked against the task).
    """
    reference = reference or {}
    if not sets:
        return {}, {}
    if cfg.dp.enabled:
        from fedfm.algorithms.privacy import dp_masked_mean

        return dp_masked_mean(cfg, rnd, sets, reference, denominator)
    held = {k: tuple(j for j, s in enumerate(sets) if k in s)
            for k in sorted({k for s in sets for k in s})}
    shapes = {k: full_shape(k, [sets[j][k] for j in h], reference) for k, h in held.items()}
    sliced = any(tuple(sets[j][k].shape) != shapes[k] for k, h in held.items() for j in h)
    method = cfg.aggregation.method
    if denominator != "coverage" and method != "mean":
        raise ValueError(f"aggregation.method = {method} needs the coverage denominator")
    if method == "mean" and (sliced or denominator != "coverage"):
        return masked_mean(sets, weights, reference, denominator), {}
    if sliced:
        out, chosen = region_aggregate(sets, weights, reference, held, shapes, cfg.aggregation)
    else:
        out, chosen = _grouped(sets, weights, held, cfg.aggregation)
    ids = list(client_ids) if client_ids is not None else list(range(len(sets)))
    metrics = {"agg_selected": sorted(ids[j] for j in chosen)} if method in KRUMS else {}
    return out, metrics


KRUMS = ("krum", "multi_krum")


def full_shape(key: str, uploads: Sequence[torch.Tensor], reference: Tensors) -> tuple[int, ...]:
    """The server-side shape of `key`: the reference's, else the (common) uploaded shape."""
    if key in reference:
        return tuple(reference[key].shape)
    shapes = {tuple(t.shape) for t in uploads}
    if len(shapes) != 1:
        raise PayloadError(f"'{key}': clients uploaded shapes {sorted(shapes)} and the server "
                           f"holds no full tensor to place them in")
    return shapes.pop()


def _grouped(sets, weights, held, cfg: AggregationConfig) -> tuple[Tensors, set[int]]:
    """Full-shape uploads: clients holding the same keys form a group; the rule runs per group
    (one group, the whole model, for FedAvg: the plain rule)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for k, h in held.items():
        groups.setdefault(h, []).append(k)
    out, chosen = {}, set()
    for h, keys in groups.items():
        agg, info = robust_aggregate([{k: sets[j][k] for k in keys} for j in h],
                                     [weights[j] for j in h], cfg)
        out.update(agg)
        chosen |= {h[i] for i in info.get("selected", [])}
    return out, chosen


def coverage_regions(key: str, uploads: Sequence[torch.Tensor], shape: tuple[int, ...]
                     ) -> list[tuple[torch.Tensor, list[int], torch.Tensor]]:
    """Prefix-slice uploads of one key -> [(flat entry indices, holder positions, (|H|, c)
    values)], one per distinct holder set H (entries nobody holds are left out)."""
    masks, vals = [], []
    for t in uploads:
        idx = prefix_index(shape, t, key)
        m = torch.zeros(shape, dtype=torch.bool)
        m[idx] = True
        v = torch.zeros(shape, dtype=torch.float64)
        v[idx] = t.double()
        masks.append(m.reshape(-1))
        vals.append(v.reshape(-1))
    patterns, inverse = torch.unique(torch.stack(masks).T, dim=0, return_inverse=True)
    out = []
    for p in range(patterns.shape[0]):
        holders = [i for i in range(len(uploads)) if bool(patterns[p, i])]
        if holders:
            coords = (inverse == p).nonzero().squeeze(1)
            out.append((coords, holders, torch.stack([vals[i][coords] for i in holders])))
    return out


def region_aggregate(sets, weights, reference: Tensors, held, shapes,
                     cfg: AggregationConfig) -> tuple[Tensors, set[int]]:
    """A robust rule per coverage region of prefix-slice uploads (RaFFM, HeteroFL): median /
    trimmed mean per entry over the region's holders; Krum / multi-Krum choose among a holder
    set H on the concatenation of every region held by exactly H, then average the chosen."""
    flat = {k: (reference[k].double().reshape(-1).clone() if k in reference
                else torch.zeros(math.prod(shapes[k]), dtype=torch.float64)) for k in held}
    by_holders: dict[tuple[int, ...], list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
    for k, h in held.items():
        for coords, pos, rows in coverage_regions(k, [sets[j][k] for j in h], shapes[k]):
            if cfg.method == "median":
                flat[k][coords] = coordinate_median(rows)
            elif cfg.method == "trimmed_mean":
                flat[k][coords] = trimmed_mean(rows, cfg.trim_fraction)
            else:
                by_holders.setdefault(tuple(h[i] for i in pos), []).append((k, coords, rows))
    chosen: set[int] = set()
    for holders, regions in by_holders.items():
        x = torch.cat([rows for _, _, rows in regions], dim=1)  # (|H|, Σ c)
        pick = krum_choose(torch.cdist(x, x) ** 2, cfg)
        w = torch.tensor([float(weights[holders[i]]) for i in pick], dtype=torch.float64)
        for k, coords, rows in regions:
            flat[k][coords] = (rows[pick] * (w / w.sum())[:, None]).sum(0)
        chosen |= {holders[i] for i in pick}
    dtype = {k: (reference[k].dtype if k in reference else sets[h[0]][k].dtype)
             for k, h in held.items()}
    return {k: v.reshape(shapes[k]).to(dtype[k]) for k, v in flat.items()}, chosen
