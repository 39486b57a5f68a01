"""MoFM for generation (`task = "generate"`): two LoRA experts of one frozen decoder LM, mixed
per token by the gate.

An expert e ∈ {global, local} is the frozen LM + its own LoRA set (the LM head W_lm stays
frozen, there is no classification head). At every position t of a sequence x,

    h^e_t = LM_e(x_≤t)                      last hidden state (final norm included)   (H,)
    p_e(· | x_≤t) = softmax(W_lm · h^e_t)   next-token distribution                    (V,)

The gate reads one hidden state per position, u_t = the *frozen* backbone's h_t (default,
`fedms.gate_input = "frozen"`: the model without any LoRA) or the global expert's h^G_t
(`"global"`), through its adapter, and the prediction is the per-token mixture

    g_t = softmax(W_g · adapter(u_t) / tau)                                           (2,)
    p(v | x_≤t) = g_t,G · p_G(v | x_≤t) + g_t,L · p_L(v | x_≤t)

Training (stage 2) minimises the mixture's response-token NLL, R = response positions:

    L = -(1/|R|) Σ_{(b,t) ∈ R} log Σ_e g_{bt,e} · p_e(x_{b,t+1} | x_{b,≤t})

which needs each expert's log-probability of the *target token only*, so the frozen global
expert's contribution is cached per client as one scalar per response token. Greedy decoding
picks y_t = argmax_v p(v | x, y_<t); each expert (and the frozen model when the gate reads it)
keeps its own KV cache, so a step costs one single-token forward per expert
(`mixture_generate(..., use_cache=False)` recomputes every prefix instead: same tokens).
With g ≡ (1, 0) the mixture is the global expert and decoding equals its own `generate`.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedfm.data.generation import IGNORE
from fedfm.models.lora import set_active_blocks

Tensors = dict[str, torch.Tensor]


class LMTail(nn.Module):
    """Blocks [start, L) + final norm + the frozen LM head, with CausalLM's parameter names
    (`backbone.*`, `lm_head.*`), so an expert's LoRA tensors can be swapped in by name."""

    def __init__(self, backbone: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.backbone, self.lm_head = backbone, lm_head

    def forward(self, h: torch.Tensor, mask: torch.Tensor, start: int, labels: torch.Tensor):
        """(hidden (|R|, H), logits (|R|, V), targets (|R|,)) at the response positions R,
        row-major: R = {(b, t) : labels[b, t+1] != -100}; on `mask`'s device."""
        out = self.backbone.run_from(h, mask, start)[:, :-1]  # (B, T-1, H)
        target = labels[:, 1:]  # (B, T-1)
        keep = target != IGNORE
        hid = out[keep.to(out.device)]  # (|R|, H)
        logits = self.lm_head(hid)  # (|R|, V)
        return hid.to(mask.device), logits.to(mask.device), target[keep]


def lm_expert_forward(tail: LMTail, tensors: Tensors, h: torch.Tensor, mask: torch.Tensor,
                      start: int, labels: torch.Tensor):
    """LMTail's outputs for the expert whose LoRA tensors are `tensors` (differentiable)."""
    dev = tail.lm_head.weight.device
    if dev.type != "cpu":
        tensors = {k: v.to(dev, non_blocking=True) for k, v in tensors.items()}
    return functional_call(tail, tensors, (h, mask, start, labels), strict=False)


def target_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log softmax(z)[target] per row: (N, V), (N,) -> (N,)."""
    return F.log_softmax(logits.float(), -1).gather(-1, target[:, None].to(logits.device))[:, 0]


def token_mixture(log_g: torch.Tensor, logp_global: torch.Tensor,
                  logp_local: torch.Tensor) -> torch.Tensor:
    """log(g_G · p_G + g_L · p_L) of the target token: (N, 2), (N,), (N,) -> (N,)."""
    return torch.logsumexp(log_g + torch.stack([logp_global, logp_local], 1), 1)


class LMStep(nn.Module):
    """One forward of the whole LM with a KV cache: (last hidden (B, H), logits (B, V), cache).
    Same parameter names as CausalLM, so `functional_call` swaps an expert's LoRA in."""

    def __init__(self, backbone: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.backbone, self.lm_head = backbone, lm_head
        params = inspect.signature(backbone.base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def forward(self, ids, mask, pos, cache):
        out = self.backbone.base(input_ids=ids, attention_mask=mask, position_ids=pos,
                                 use_cache=True, **{self._cache_kw: cache})
        h = out.last_hidden_state[:, -1]  # (B, H)
        new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return h, self.lm_head(h), new_cache


Expert = tuple[Tensors, set[int] | None]  # (LoRA tensors, blocks whose LoRA is applied)


@torch.no_grad()
def mixture_generate(step: LMStep, experts: list[Expert], gate, gate_from: int,
                     prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                     eos: int | None, pad: int, use_cache: bool = True) -> torch.Tensor:
    """Greedy decoding of the per-token mixture of experts[0] (global) and experts[1] (local);
    the gate reads the last hidden state of experts[gate_from] (2 = a frozen pass). Prompts are
    left-padded (B, P); returns (B, <= max_new_tokens) on the CPU, `pad` after each eos, as
    transformers' greedy `generate` does (same position ids: cumsum of the mask - 1)."""
    dev = step.lm_head.weight.device
    if dev.type != "cpu":
        experts = [({k: v.to(dev) for k, v in t.items()}, b) for t, b in experts]
    ids, mask = prompt_ids.to(dev), prompt_mask.to(dev)
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, P)
    caches: list = [None] * len(experts)
    inp, inp_pos = ids, pos
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=dev)
    out = []
    for _ in range(max_new_tokens):
        hs, zs = [], []
        for i, (tensors, blocks) in enumerate(experts):
            set_active_blocks(step.backbone, blocks)
            args = (inp, mask, inp_pos, caches[i]) if use_cache else (ids, mask, pos, None)
            h, z, caches[i] = functional_call(step, tensors, args, strict=False)
            hs.append(h)
            zs.append(z)
        g = gate(hs[gate_from].float().cpu())  # the gate lives on the CPU, in fp32
        logp = torch.logsumexp(g.log_weights[:, :, None].to(dev) + torch.stack(
            [F.log_softmax(z.float(), -1) for z in zs[:2]], 1), 1)  # (B, V)
        nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logp.argmax(-1))
        out.append(nxt)
        done = done | (nxt == eos) if eos is not None else done
        if bool(done.all()):
            break
        inp, inp_pos = nxt[:, None], inp_pos[:, -1:] + 1  # (B, 1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        ids, pos = torch.cat([ids, inp], 1), torch.cat([pos, inp_pos], 1)
    return torch.stack(out, 1).cpu() if out else prompt_ids.new_zeros(prompt_ids.shape[0], 0)
