"""Sparse upcycling of a dense Llama-style LM (SmolLM2-135M) into a native MixtralForCausalLM.

Every block's gated MLP `down(act(gate x) * up x)` becomes E identical experts (gate_up = [gate;
up] (E, 2I, H), down (E, H, I)) and a random router (E, H) choosing top-k. Mixtral always
renormalises its top-k weights to sum to 1, so with identical experts
`Σ_{e in topk} w_e · MLP(x) = MLP(x)`: the upcycled model equals the dense one at init (up to
float summation order), for any k. Attention, norms, embeddings and the LM head are copied.
The folder is written with `save_pretrained` (safetensors) + the source tokenizer, so
`model.name = "hf", model.path = DIR` loads it like any Mixtral checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fedfm.core.errors import ConfigError

_COPY = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
         "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
         "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "rope_parameters",
         "rope_theta", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout")


def mixtral_config(dense_cfg, num_experts: int, top_k: int):
    from transformers import MixtralConfig

    if getattr(dense_cfg, "model_type", None) not in ("llama", "mistral", "qwen2"):
        raise ConfigError(f"upcycle: model_type '{dense_cfg.model_type}' is not a Llama-style "
                          "gated-MLP decoder (llama, mistral, qwen2).")
    if getattr(dense_cfg, "mlp_bias", False) or getattr(dense_cfg, "attention_bias", False):
        raise ConfigError("upcycle: MLP/attention biases have no place in Mixtral.")
    if not 1 <= top_k <= num_experts:
        raise ConfigError(f"upcycle: top-k must be in 1..{num_experts}, got {top_k}.")
    kw = {k: getattr(dense_cfg, k) for k in _COPY if getattr(dense_cfg, k, None) is not None}
    cfg = MixtralConfig(**kw, num_local_experts=num_experts, num_experts_per_tok=top_k,
                        router_jitter_noise=0.0, sliding_window=None)
    cfg.head_dim = getattr(dense_cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg


def upcycle_lm(dense, num_experts: int, top_k: int, seed: int = 0, router_std: float = 0.02):
    """A MixtralForCausalLM whose blocks are `dense`'s with the MLP copied into every expert."""
    from transformers import MixtralForCausalLM

    cfg = mixtral_config(dense.config, num_experts, top_k)
    torch.manual_seed(seed)
    moe = MixtralForCausalLM(cfg).to(next(dense.parameters()).dtype)
    src = dense.state_dict()
    out = {}
    g = torch.Generator().manual_seed(seed)
    for k, v in src.items():
        if ".mlp." not in k:
            out[k] = v
            continue
        pre, _, name = k.partition(".mlp.")
        if name != "gate_proj.weight":
            continue
        gate, up = v, src[f"{pre}.mlp.up_proj.weight"]
        down = src[f"{pre}.mlp.down_proj.weight"]
        out[f"{pre}.mlp.experts.gate_up_proj"] = torch.cat([gate, up]).expand(
            num_experts, -1, -1).clone()
        out[f"{pre}.mlp.experts.down_proj"] = down.expand(num_experts, -1, -1).clone()
        out[f"{pre}.mlp.gate.weight"] = (torch.randn(num_experts, gate.shape[1], generator=g)
                                         * router_std).to(v.dtype)
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    missing, unexpected = moe.load_state_dict(out, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"upcycle: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tie_word_embeddings:
        moe.tie_weights()
    return moe.eval()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "tokenizer.model", "merges.txt", "vocab.json",
                   "chat_template.jinja", "generation_config.json")


def upcycle_folder(src: Path, out: Path, num_experts: int, top_k: int, seed: int = 0) -> Path:
    """Read a dense HF folder (safetensors only), write the upcycled Mixtral folder to `out`."""
    from transformers import AutoModelForCausalLM

    try:
        dense = AutoModelForCausalLM.from_pretrained(
            str(src), use_safetensors=True, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ConfigError(f"upcycle: '{src}' is not a loadable causal LM folder: {e}") from None
    moe = upcycle_lm(dense, num_experts, top_k, seed)
    out.mkdir(parents=True, exist_ok=True)
    moe.save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (out / name).exists():
            shutil.copy(src / name, out / name)
    return out
