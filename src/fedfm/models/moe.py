"""Mixture-of-Experts FFN layers built from a dense BERT (transformers' BertModel, e.g. MiniLM), and
the statistics FedMoE reads.

A dense block's FFN  y = LN(a + W_2 · gelu(W_1 a + b_1) + b_2)  becomes E experts + a router:

  E_e(a) = W_2[:, I_e] · gelu(W_1[I_e] a + b_1[I_e])          expert e, neuron group I_e
  g = softmax_S(W_r a)                                         S = the experts the client holds
  T = top-k(g)                                                 (k = min(top_k, |S|))
  moefy:    y = LN(a + Σ_{e∈T} (g_e / sg(g_e)) · E_e(a) + b_2)  (value 1 per expert: with every
            expert on this IS the dense FFN; the gradient still reaches the router)
  upcycle:  y = LN(a + Σ_{e∈T} (g_e / Σ_{T} g) · E_e(a) + b_2)  (E copies of the whole FFN)

Load balancing (Switch Transformer, Fedus et al. 2021), over real tokens and held experts:
  aux = |S| · Σ_{e∈S} f_e · P_e,   f_e = share of token->expert assignments, P_e = mean g_e.

Two builds from a dense pre-trained model (no pre-trained MoE can be downloaded here):
- `moefy` (MoEfication, Zhang et al. 2022): split the FFN neurons into E equal groups by balanced
  k-means, on co-activation patterns when activations are given, else on the rows of W_1
  (their "parameter clustering"); router row e = mean of W_1's rows in group e (their
  "similarity selection"), so routing is meaningful before any training.
- `upcycle` (sparse upcycling, Komatsuzaki et al. 2022): every expert is a copy of the FFN, the
  router is random; identical to the dense model at the start whatever k.

In the model: each block (a transformers `BertLayer`, or any layer with BERT's
`intermediate.dense` / `output.dense` / `output.LayerNorm` and `feed_forward_chunk`) loses
`intermediate` and `output` and gains `moe` (an `MoEFFN`); its class becomes a subclass whose
`feed_forward_chunk(a)` runs the MoE. Attention, masks and embeddings stay transformers' own.
Parameter names: `encoder.layer.{i}.moe.experts.{e}.dense_in.weight`, `...moe.router.weight`.
Real (non-pad) tokens come from the attention mask the backbone was called with (a pre-hook on
the base model, shared with models/hf/moe.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BUILDS = ("moefy", "upcycle")


class MoEOutput(NamedTuple):
    hidden: torch.Tensor  # (B, T, H)
    aux_loss: torch.Tensor  # () load-balancing loss
    load: torch.Tensor  # (E,) token->expert assignments over real tokens (float counts)


class Expert(nn.Module):
    """One expert: dense_out(gelu(dense_in(a))), no output bias (b_2 is shared)."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.dense_in = nn.Linear(hidden, width)
        self.dense_out = nn.Linear(width, hidden, bias=False)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.dense_out(F.gelu(self.dense_in(a)))


class Experts(nn.ModuleList):
    """E experts (`experts.{e}.dense_in/out`); `forward` runs each token only through the
    experts routed to it."""

    def __init__(self, hidden: int, widths: list[int]):
        super().__init__(Expert(hidden, w) for w in widths)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (N, H), idx/w (N, k): expert ids and weights per token -> Σ_j w_j E_{idx_j}(x)."""
        out = torch.zeros_like(x)  # (N, H)
        for e in idx.unique().tolist():
            rows, slot = (idx == e).nonzero(as_tuple=True)
            y = self[e](x[rows])  # (n_e, H)
            out.index_add_(0, rows, (y * w[rows, slot, None]).to(out.dtype))
        return out


class TopKRouter(nn.Module):
    """g = softmax over held experts of W_r a; each token goes to its top-k held experts."""

    def __init__(self, hidden: int, num_experts: int, top_k: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_experts, hidden))  # (E, H): one row per expert
        self.top_k = top_k

    def forward(self, x: torch.Tensor, held: torch.Tensor):
        """x (N, H), held (E,) bool -> probs (N, E), idx (N, k), gates (N, k)."""
        logits = F.linear(x, self.weight).float()  # (N, E)
        logits = logits.masked_fill(~held, float("-inf"))
        probs = logits.softmax(-1)  # (N, E), zero on unheld experts
        k = min(self.top_k, int(held.sum()))
        gates, idx = probs.topk(k, dim=-1)  # (N, k)
        return probs, idx, gates


class MoEFFN(nn.Module):
    """The MoE replacement of `Layer.ffn`: LN(a + Σ gated experts(a) + b_2)."""

    def __init__(self, hidden: int, widths: list[int], top_k: int, eps: float, mode: str):
        super().__init__()
        self.experts = Experts(hidden, widths)
        self.router = TopKRouter(hidden, len(widths), top_k)
        self.bias = nn.Parameter(torch.zeros(hidden))  # b_2, shared by all experts
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.mode = mode
        self.held = torch.ones(len(widths), dtype=torch.bool)  # not a parameter: set per client

    def forward(self, a: torch.Tensor, token_mask: torch.Tensor) -> MoEOutput:
        b, t, h = a.shape
        x = a.reshape(b * t, h)  # (N, H)
        real = token_mask.reshape(b * t)  # (N,) bool
        probs, idx, gates = self.router(x, self.held)  # (N, E), (N, k), (N, k)
        if self.mode == "moefy":
            w = gates / gates.detach().clamp_min(1e-30)  # value 1, gradient to the router
        else:
            w = gates / gates.sum(-1, keepdim=True)
        y = self.experts(x, idx, w) + self.bias  # (N, H)
        hidden = self.LayerNorm(a + y.reshape(b, t, h))  # (B, T, H)
        aux, load = balance_loss(probs[real], idx[real], self.held)
        return MoEOutput(hidden, aux, load)


def balance_loss(probs: torch.Tensor, idx: torch.Tensor, held: torch.Tensor):
    """aux = |S| Σ_e f_e P_e over real tokens; also returns the assignment counts (E,)."""
    e = probs.shape[-1]
    load = torch.bincount(idx.reshape(-1), minlength=e).to(probs.dtype)  # (E,)
    if idx.numel() == 0:
        return probs.sum() * 0.0, load
    f = load / load.sum()
    p = probs.mean(0)  # (E,)
    return int(held.sum()) * (f * p).sum(), load


def _moe_feed_forward(self, a: torch.Tensor) -> torch.Tensor:
    """The MoE layer's `feed_forward_chunk`: a (B, T, H) attention output -> LN(a + MoE(a))."""
    from fedfm.models.hf.moe_tokens import real_mask as _real_mask

    real = _real_mask(a.shape[0] * a.shape[1])  # (B*T,) bool, or None: every token is real
    tokens = (real.reshape(a.shape[:2]).to(a.device) if real is not None
              else torch.ones(a.shape[:2], dtype=torch.bool, device=a.device))
    self.last = self.moe(a, tokens)
    return self.last.hidden  # (B, T, H)


_MOE_CLASSES: dict[type, type] = {}


def _moe_class(cls: type) -> type:
    """`MoE<Layer>`: the layer class with its FFN replaced by `self.moe` (one per layer class)."""
    if cls not in _MOE_CLASSES:
        _MOE_CLASSES[cls] = type(f"MoE{cls.__name__}", (cls,),
                                 {"feed_forward_chunk": _moe_feed_forward, "is_fedfm_moe": True,
                                  "__module__": __name__})
    return _MOE_CLASSES[cls]


def _check_dense(layer: nn.Module, i: int) -> None:
    ok = all(hasattr(layer, a) for a in ("feed_forward_chunk", "intermediate", "output")) and all(
        hasattr(getattr(layer, a), "dense") for a in ("intermediate", "output"))
    if not ok:
        raise ValueError(f"block {i} ({type(layer).__name__}) is not a BERT-style block "
                         "(intermediate.dense / output.dense / output.LayerNorm); MoEfication "
                         "and upcycling run on BERT-family encoders such as MiniLM")


def install(layer: nn.Module, moe: MoEFFN) -> None:
    """Turn a dense BERT block into an MoE block in place: FFN modules out, `moe` in."""
    if not getattr(layer, "is_fedfm_moe", False):
        del layer.intermediate, layer.output
        layer.__class__ = _moe_class(type(layer))
    layer.moe = moe
    layer.last = None


def _track_real_tokens(bert: nn.Module) -> None:
    """Record the attention mask each forward is called with (read by `_moe_feed_forward`)."""
    from fedfm.models.hf.moe import _mask_pre_hook

    base = getattr(bert, "base", bert)
    if not getattr(base, "_fedfm_real_hook", False):
        base.register_forward_pre_hook(_mask_pre_hook, with_kwargs=True)
        base._fedfm_real_hook = True


def balanced_kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 10) -> list[torch.Tensor]:
    """Cluster the rows of x (n, d) into k groups of equal size n/k; returns sorted index groups.

    Lloyd steps whose assignment is balanced greedily: rows in order of their distance to
    their nearest centre each join the nearest centre that still has room.
    """
    n = x.shape[0]
    if n % k:
        raise ValueError(f"{n} neurons cannot be split into {k} equal experts")
    gen = torch.Generator().manual_seed(seed)
    xs = x.detach().double().numpy()  # (n, d)
    centres = xs[torch.randperm(n, generator=gen)[:k].numpy()]  # (k, d)
    sq = (xs**2).sum(1, keepdims=True)  # (n, 1)
    for _ in range(iters):
        d = sq - 2 * xs @ centres.T + (centres**2).sum(1)  # (n, k) squared distances
        assign = _balanced_assign(d, n // k)  # (n,)
        onehot = np.eye(k)[assign]  # (n, k)
        centres = onehot.T @ xs / onehot.sum(0)[:, None]
    return [torch.from_numpy(np.flatnonzero(assign == c)) for c in range(k)]


def _balanced_assign(d: np.ndarray, cap: int) -> np.ndarray:
    """d (n, k) distances -> centre per row, at most `cap` rows per centre."""
    room = [cap] * d.shape[1]
    assign = np.empty(d.shape[0], dtype=np.int64)
    prefs = np.argsort(d, axis=1, kind="stable").tolist()  # (n, k) nearest centre first
    for i in np.argsort(d.min(1), kind="stable").tolist():
        for c in prefs[i]:
            if room[c]:
                assign[i], room[c] = c, room[c] - 1
                break
    return assign


def moefy_layer(layer: nn.Module, num_experts: int, top_k: int, seed: int,
                activations: torch.Tensor | None = None) -> MoEFFN:
    """Split `layer`'s FFN neurons into experts (co-activation clusters if `activations` (N, f)
    of gelu(W_1 a) are given, else W_1-row clusters); router rows = group means of W_1."""
    w1, b1 = layer.intermediate.dense.weight, layer.intermediate.dense.bias  # (f, H), (f,)
    w2, b2 = layer.output.dense.weight, layer.output.dense.bias  # (H, f), (H,)
    feats = (activations > 0).float().T if activations is not None else F.normalize(w1, dim=1)
    groups = balanced_kmeans(feats.detach(), num_experts, seed)
    moe = MoEFFN(w1.shape[1], [len(g) for g in groups], top_k, layer.output.LayerNorm.eps, "moefy")
    with torch.no_grad():
        for ex, g in zip(moe.experts, groups):
            ex.dense_in.weight.copy_(w1[g]), ex.dense_in.bias.copy_(b1[g])
            ex.dense_out.weight.copy_(w2[:, g])
        moe.router.weight.copy_(torch.stack([w1[g].mean(0) for g in groups]))
        moe.bias.copy_(b2)
    moe.LayerNorm.load_state_dict(layer.output.LayerNorm.state_dict())
    return moe


def upcycle_layer(layer: nn.Module, num_experts: int, top_k: int, seed: int) -> MoEFFN:
    """E copies of `layer`'s FFN and a random router N(0, 0.02)."""
    w1 = layer.intermediate.dense.weight
    moe = MoEFFN(w1.shape[1], [w1.shape[0]] * num_experts, top_k,
                 layer.output.LayerNorm.eps, "upcycle")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ex in moe.experts:
            ex.dense_in.weight.copy_(w1), ex.dense_in.bias.copy_(layer.intermediate.dense.bias)
            ex.dense_out.weight.copy_(layer.output.dense.weight)
        moe.router.weight.copy_(torch.randn(moe.router.weight.shape, generator=gen) * 0.02)
        moe.bias.copy_(layer.output.dense.bias)
    moe.LayerNorm.load_state_dict(layer.output.LayerNorm.state_dict())
    return moe


def to_moe(bert: nn.Module, num_experts: int, top_k: int, build: str = "moefy", seed: int = 0,
           activations: list[torch.Tensor] | None = None) -> None:
    """Replace every dense block's FFN of `bert` (an HFBackbone over a BERT-style encoder) by an
    MoE, in place (frozen like the rest)."""
    if build not in BUILDS:
        raise ValueError(f"unknown MoE build '{build}'; valid: {', '.join(BUILDS)}")
    for i, layer in enumerate(bert.blocks):
        if getattr(layer, "is_fedfm_moe", False):
            continue
        _check_dense(layer, i)
        if build == "moefy":
            acts = activations[i] if activations is not None else None
            moe = moefy_layer(layer, num_experts, top_k, seed + i, acts)
        else:
            moe = upcycle_layer(layer, num_experts, top_k, seed + i)
        for p in moe.parameters():
            p.requires_grad_(False)
        install(layer, moe)
    _track_real_tokens(bert)


def moe_blocks(model: nn.Module) -> list[nn.Module]:
    """The MoE blocks of `model` in order (each has `.moe` (MoEFFN) and `.last` (MoEOutput))."""
    return [m for m in model.modules() if getattr(m, "is_fedfm_moe", False)]


def set_held(model: nn.Module, held: list[list[int]] | None) -> None:
    """Let block i route only to experts held[i] (None: every expert)."""
    for i, blk in enumerate(moe_blocks(model)):
        e = len(blk.moe.experts)
        mask = torch.ones(e, dtype=torch.bool)
        if held is not None:
            if not held[i]:
                raise ValueError(f"block {i}: a client must hold at least one expert")
            mask = torch.zeros(e, dtype=torch.bool)
            mask[list(held[i])] = True
        blk.moe.held = mask


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Σ over MoE blocks of the last forward's load-balancing loss."""
    return sum(blk.last.aux_loss for blk in moe_blocks(model) if blk.last is not None)


@torch.inference_mode()
def activation_shares(forward, model: nn.Module, batches) -> torch.Tensor:
    """p[i, j] = n[i, j] / Σ_j n[i, j]: share of token->expert assignments of block i to expert
    j over `batches` of (ids, mask, ...); rows sum to 1. `forward(ids, mask)` runs the model."""
    blocks = moe_blocks(model)
    counts = torch.zeros(len(blocks), len(blocks[0].moe.experts), dtype=torch.float64)
    for ids, mask, *_ in batches:
        forward(ids, mask)
        counts += torch.stack([blk.last.load.double() for blk in blocks])
    return counts / counts.sum(1, keepdim=True).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------
# MoE checkpoint folders: `moe.json` (experts, widths, top_k, mode) + `model.safetensors`


def save_moe_folder(bert: nn.Module, folder: str | Path) -> None:
    """Write an MoE backbone (e.g. MoEfied offline on co-activations of your own texts) so that
    `fedmoe.checkpoint = folder` starts from it. Weights: safetensors; layout: JSON."""
    from safetensors.torch import save_file

    blocks = moe_blocks(bert)
    if len(blocks) != bert.spec.num_layers:
        raise ValueError("every block must be an MoE block (call to_moe first)")
    layout = {"format": "fedfm-moe/1", "hidden": bert.spec.hidden,
              "widths": [[ex.dense_in.out_features for ex in b.moe.experts] for b in blocks],
              "top_k": blocks[0].moe.router.top_k, "mode": blocks[0].moe.mode}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe.json").write_text(json.dumps(layout, indent=1))
    state = {k: v.detach().contiguous() for k, v in bert.state_dict().items()
             if "lora_" not in k}
    save_file(state, str(out / "model.safetensors"))


def load_moe_folder(bert: nn.Module, folder: str | Path) -> dict:
    """Turn `bert`'s blocks into the folder's MoE layout and load all its weights (in place).
    Raises ValueError naming the problem when the folder does not fit the backbone."""
    from safetensors.torch import load_file

    root = Path(folder)
    if not (root / "moe.json").is_file() or not (root / "model.safetensors").is_file():
        raise ValueError(f"'{root}' is not a fedfm MoE folder (needs moe.json and model.safetensors)")
    layout = json.loads((root / "moe.json").read_text())
    widths = layout.get("widths", [])
    if layout.get("hidden") != bert.spec.hidden or len(widths) != bert.spec.num_layers:
        raise ValueError(f"'{root}': hidden {layout.get('hidden')} x {len(widths)} blocks does not "
                         f"match the backbone ({bert.spec.hidden} x {bert.spec.num_layers})")
    eps = float(getattr(bert.config, "layer_norm_eps", 1e-12))
    for i, layer in enumerate(bert.blocks):
        if not getattr(layer, "is_fedfm_moe", False):
            _check_dense(layer, i)
        install(layer, MoEFFN(bert.spec.hidden, widths[i], layout["top_k"], eps, layout["mode"]))
    _track_real_tokens(bert)
    state = load_file(str(root / "model.safetensors"))
    own = bert.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"'{root}' lacks or mis-shapes {len(bad)} weights, e.g. '{bad[0]}'")
    bert.load_state_dict({k: state[k] for k in own})
    for p in bert.parameters():
        p.requires_grad_(False)
    return layout
