"""What a subnetwork costs, and the widths that fit a client's budget.

Units (a budget b is a fraction of the full model's cost in the same unit):

    params  Σ_blocks P(h_i, f_i): parameters of the transformer blocks. The embeddings are not
            counted: they are frozen, never cut and cost no FLOPs (a lookup); the head is tiny.
    flops   Σ_blocks 2·T·P_lin(h_i, f_i) + 4·T²·h_i·hd: forward matmul FLOPs per example at
            T = model.max_length (P_lin = weights of the linear layers).
    memory  an estimate of peak training bytes: 4·(all weights) + optimiser/grad state
            (12 B per trained block weight for full fine-tuning: grad + Adam m, v; 16 B per LoRA
            weight) + fp32 activations kept for backward, per block
            4·B·T·(6H + 4·h_i·hd + h_i·T + 2·f_i) at B = train.batch_size.

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
from dataclasses import dataclass

import torch

from fedfm.core.errors import ConfigError
from fedfm.models.bert import EncoderSpec
from fedfm.models.elastic import Widths

UNITS = ("params", "flops", "memory")
RATIOS = (0.25, 0.5, 0.75, 1.0)


def block_params(hidden: int, heads: int, ffn: int, head_dim: int) -> int:
    """Parameters of one block: q, k, v, o (+ biases), FFN in/out (+ biases), two LayerNorms."""
    a = heads * head_dim
    return 4 * hidden * a + 3 * a + hidden + 2 * hidden * ffn + ffn + hidden + 4 * hidden


def embedding_params(spec: EncoderSpec) -> int:
    return (spec.vocab_size + spec.max_position + spec.type_vocab) * spec.hidden + 2 * spec.hidden


@dataclass(frozen=True)
class CostModel:
    """Cost of widths in `unit` for a given spec, sequence length, batch and fine-tuning mode."""

    spec: EncoderSpec
    unit: str = "params"
    seq: int = 128
    batch: int = 32
    finetune: str = "full"  # full | lora | head
    lora_rank: int = 8

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ConfigError(f"budget unit must be one of {', '.join(UNITS)}, not '{self.unit}'.")

    def params(self, w: Widths) -> int:
        s = self.spec
        return sum(block_params(s.hidden, h, f, s.head_dim) for h, f in zip(w.heads, w.ffn))

    def flops(self, w: Widths) -> float:
        s, t = self.spec, self.seq
        lin = sum(4 * s.hidden * h * s.head_dim + 2 * s.hidden * f for h, f in zip(w.heads, w.ffn))
        attn = sum(4 * t * t * h * s.head_dim for h in w.heads)
        return 2 * t * lin + attn

    def memory(self, w: Widths) -> float:
        s, b, t = self.spec, self.batch, self.seq
        blocks = self.params(w)
        weights = 4 * (embedding_params(s) + blocks)
        if self.finetune == "full":
            state = 12 * blocks
        elif self.finetune == "lora":  # q and v LoRA per block: r·(H + h·hd) each
            state = 16 * sum(2 * self.lora_rank * (s.hidden + h * s.head_dim) for h in w.heads)
        else:
            state = 0
        acts = sum(4 * b * t * (6 * s.hidden + 4 * h * s.head_dim + h * t + 2 * f)
                   for h, f in zip(w.heads, w.ffn))
        return float(weights + state + acts)

    def cost(self, w: Widths) -> float:
        return float(getattr(self, self.unit)(w))

    def fraction(self, w: Widths) -> float:
        """Cost of `w` relative to the full model's."""
        return self.cost(w) / self.cost(Widths.of(self.spec))


def _widest_ffn(cm: CostModel, heads: int, cap: float) -> int | None:
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


def largest_uniform(cm: CostModel, budget: float) -> Widths:
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


def sample_fitting(cm: CostModel, budget: float, generator: torch.Generator,
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


def choose_widths(cm: CostModel, budget: float, rule: str = "largest",
                  generator: torch.Generator | None = None) -> Widths:
    if rule == "largest":
        return largest_uniform(cm, budget)
    if rule == "sample":
        return sample_fitting(cm, budget, generator or torch.Generator().manual_seed(0))
    raise ConfigError(f"Unknown sizing rule '{rule}'. Valid: largest, sample.")
