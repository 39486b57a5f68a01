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
