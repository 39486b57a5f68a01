"""Differential privacy for averaging algorithms: DP-FedAvg (McMahan et al. 2018), user level.

Per round, with reference θ_t (the tensors the clients started from) and m arrived updates:
  Δ_k  = θ_k - θ_t                                   (all uploaded tensors, as one vector)
  Δ̂_k  = Δ_k · min(1, C / ||Δ_k||₂)                   (clip: every client's L2 norm <= C)
  θ_t+1 = θ_t + (Σ_k Δ̂_k + N(0, σ²C² I)) / m          (noise std on the mean: σ·C / m)
Each round is a sampled Gaussian mechanism with sampling rate q = clients per round / K and
noise multiplier σ; ε(δ) after t rounds comes from the RDP accountant of Google's
`dp-accounting` library (composition of t Poisson-sampled Gaussians — our sampling is a fixed-size
draw without replacement, for which this is the usual approximation). Unweighted mean: n_k would
leak, and weights would change the sensitivity. The noise generator is seeded from
(seed, round) so runs and resumes are reproducible — see docs/threat-model.md for what this
means (the noise is only secret while the run seed is).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch

from fedfm.core.errors import ConfigError
from fedfm.core.seeds import derive_seed
from fedfm.models.elastic import prefix_index

Tensors = dict[str, torch.Tensor]
RDP_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 192, 256)  # integer orders: fast, exact
DP_STREAM = 0xD9


def clip_delta(delta: Tensors, clip: float) -> tuple[Tensors, float]:
    """Δ · min(1, C / ||Δ||₂) over all tensors jointly; returns (clipped, norm before)."""
    norm = math.sqrt(sum(float((d.double() ** 2).sum()) for d in delta.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: d.double() * scale for k, d in delta.items()}, norm


def gaussian_noise(like: Tensors, std: float, generator: torch.Generator) -> Tensors:
    """N(0, std²) per coordinate, drawn key by key in sorted order (reproducible)."""
    return {k: torch.randn(like[k].shape, generator=generator, dtype=torch.float64) * std
            for k in sorted(like)}


@functools.lru_cache(maxsize=256)
def epsilon(q: float, noise_multiplier: float, rounds: int, delta: float) -> float | None:
    """ε after `rounds` sampled Gaussian mechanisms (q, σ) at δ; None if σ = 0 (no privacy)."""
    if noise_multiplier <= 0:
        return None
    try:
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant as rdp
    except ImportError:
        raise ConfigError("dp.enabled needs the privacy accountant: pip install "
                          "'fedfm[dp]' (dp-accounting).") from None
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(acc.get_epsilon(delta))


def sampling_rate(cfg) -> float:
    k = cfg.data.num_clients
    per_round = min(k, max(cfg.sampling.min_clients, int(round(cfg.sampling.fraction * k))))
    return per_round / k


def dp_mean(cfg, rnd: int, sets: Sequence[Tensors], reference: Tensors,
            m: int) -> tuple[Tensors, dict[str, Any]]:
    """DP-FedAvg's clipped, noised mean (see the module docstring); returns (θ_t+1, metrics)."""
    dp = cfg.dp
    total: Tensors = {}
    clipped = 0
    for tensors in sets:
        ref = {k: reference.get(k) for k in tensors}
        delta = {k: t.double() - (ref[k].double() if ref[k] is not None else 0.0)
                 for k, t in tensors.items()}
        d, norm = clip_delta(delta, dp.clip)
        clipped += norm > dp.clip
        for k, v in d.items():
            total[k] = total[k] + v if k in total else v
    std = dp.noise_multiplier * dp.clip
    noise = gaussian_noise(total, std, torch.Generator().manual_seed(
        derive_seed(cfg.seed, rnd, DP_STREAM)))
    template = sets[0]
    out = {}
    for k, t in template.items():
        base = reference[k].double() if k in reference else torch.zeros_like(t, dtype=torch.float64)
        out[k] = (base + (total[k] + noise[k]) / max(m, 1)).to(t.dtype)
    eps = epsilon(sampling_rate(cfg), dp.noise_multiplier, rnd + 1, dp.delta)
    return out, {"dp_epsilon": eps, "dp_clipped": int(clipped),
                 "dp_noise_std": std / max(m, 1)}


def dp_masked_mean(cfg, rnd: int, sets: Sequence[Tensors], reference: Tensors,
                   denominator: str = "coverage") -> tuple[Tensors, dict[str, Any]]:
    """DP-FedAvg for partial and prefix-slice uploads (every averaging algorithm's DP path).

    Client k uploads θ_k on its entries (keys it holds; prefix slices of the server tensors):
      Δ_k = θ_k - θ_t[entries of k],  Δ̂_k = Δ_k · min(1, C / ||Δ_k||₂)   (whole upload, jointly)
      θ_t+1[e] = θ_t[e] + (Σ_{k∋e} Δ̂_k[e] + N(0, σ²C²)) / c_e   for entries some client holds
    with c_e = the number of holders of e (coverage) or of all arrived clients (all_clients);
    entries nobody holds stay θ_t. One client changes the summed vector by at most C in L2
    (joint clipping), so each round is the same Gaussian mechanism as `dp_mean`, which this
    equals when every client uploads every key."""
    dp, m = cfg.dp, len(sets)
    total: Tensors = {}
    count: Tensors = {}
    clipped = 0
    for tensors in sets:
        delta, where = {}, {}
        for k, t in tensors.items():
            shape = tuple(reference[k].shape) if k in reference else tuple(t.shape)
            where[k] = prefix_index(shape, t, k)
            base = reference[k].double()[where[k]] if k in reference else 0.0
            delta[k] = t.double() - base
        d, norm = clip_delta(delta, dp.clip)
        clipped += norm > dp.clip
        for k, v in d.items():
            if k not in total:
                shape = reference[k].shape if k in reference else v.shape
                total[k] = torch.zeros(shape, dtype=torch.float64)
                count[k] = torch.zeros(shape, dtype=torch.float64)
            total[k][where[k]] += v
            count[k][where[k]] += 1.0
    std = dp.noise_multiplier * dp.clip
    noise = gaussian_noise(total, std, torch.Generator().manual_seed(
        derive_seed(cfg.seed, rnd, DP_STREAM)))
    out = {}
    for k in total:
        like = reference[k] if k in reference else next(s[k] for s in sets if k in s)
        base = reference[k].double() if k in reference else torch.zeros_like(total[k])
        denom = count[k] if denominator == "coverage" else torch.full_like(count[k], m)
        mean = base + (total[k] + noise[k]) / denom.clamp_min(1.0)
        out[k] = torch.where(count[k] > 0, mean, base).to(like.dtype)
    eps = epsilon(sampling_rate(cfg), dp.noise_multiplier, rnd + 1, dp.delta)
    return out, {"dp_epsilon": eps, "dp_clipped": int(clipped), "dp_noise_std": std / max(m, 1)}
