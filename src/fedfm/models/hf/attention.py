"""`fedfm_sdpa`: transformers' SDPA attention, run in fp32 on the CPU under bf16 autocast.

torch's CPU flash-attention kernel (forward + backward) is slower in bf16 than in fp32 at the
head sizes of small encoders (bench/reports/performance.md: 36 % of a MiniLM bf16 step), and
fp32 is also the more accurate, so fedfm's legacy BERT always ran CPU attention in fp32. This
keeps that property for every Hugging Face family: q, k, v are upcast, the kernel runs with
autocast off, and the output returns in q's dtype, so the rest of the block is unchanged.
Registered in transformers' own `AttentionInterface` (with SDPA's mask builder); on other
devices it is plain SDPA.
"""

from __future__ import annotations

import torch

NAME = "fedfm_sdpa"
_REGISTERED = False


def fedfm_sdpa(module, query, key, value, attention_mask, *args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or query.dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    dtype = query.dtype
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, *args, **kwargs)
    return out.to(dtype), weights


def register() -> str:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        AttentionInterface.register(NAME, fedfm_sdpa)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        _REGISTERED = True
    return NAME


def use_fedfm_sdpa(model: torch.nn.Module) -> bool:
    """Switch a model that runs SDPA to fedfm_sdpa (models on eager/flash are left alone)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(register())
    return True


def _cast_input_once(mod, args, kwargs):
    """Forward pre-hook: under autocast, hand the module its fp32 `hidden_states` already in the
    autocast dtype. Autocast would otherwise cast the same tensor once per projection that
    reads it (q, k, v and each LoRA A: 5 copies per block with q/v LoRA), and in the backward
    pass cast each of their gradients back. Forward values are identical (the same cast)."""
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        return None
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
        return None
    x = x.to(torch.get_autocast_dtype(dev))
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


def cast_shared_inputs(backbone) -> list:
    """Register `_cast_input_once` on the modules whose input feeds several projections: each
    block's attention (parent of q / fused qkv) and gated MLP (parent of gate and up). Returns
    the hook handles (also kept as `backbone.cast_hooks`)."""
    from fedfm.models.hf.family import get_path

    fam, handles = backbone.family, []
    paths = []
    if fam.attn is not None and (fam.attn.q or fam.attn.qkv):
        paths.append((fam.attn.q or fam.attn.qkv).rpartition(".")[0])
    if fam.mlp is not None and fam.mlp.gate and fam.mlp.up:
        paths.append(fam.mlp.gate.rpartition(".")[0])
    for block in backbone.blocks:
        for path in paths:
            if path:
                mod = get_path(block, path)
                handles.append(mod.register_forward_pre_hook(_cast_input_once, with_kwargs=True))
    object.__setattr__(backbone, "cast_hooks", handles)
    return handles
