"""Tiny random Hugging Face MoE models (hidden 32, 2 MoE blocks, 4 experts, top-2) saved as local
folders with MiniLM's tokenizer, one per fused-expert family."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.hf_tiny import TOKENIZER_FILES, V

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


def moe_config(family: str):
    import transformers as T

    base = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                bos_token_id=101, eos_token_id=102, num_experts_per_tok=2)
    if family == "mixtral":
        return T.MixtralConfig(**base, intermediate_size=32, num_local_experts=4)
    if family == "qwen2_moe":
        return T.Qwen2MoeConfig(**base, num_experts=4, moe_intermediate_size=32,
                                shared_expert_intermediate_size=32, intermediate_size=64,
                                decoder_sparse_step=1, mlp_only_layers=[])
    if family == "qwen3_moe":
        return T.Qwen3MoeConfig(**base, num_experts=4, moe_intermediate_size=32, head_dim=8,
                                intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[])
    return T.OlmoeConfig(**base, num_experts=4, intermediate_size=32)


def moe_folder(root: Path, family: str, seed: int = 0) -> Path:
    from transformers import AutoModel

    from fedfm.models.loading import minilm_path

    folder = root / family
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    AutoModel.from_config(moe_config(family)).save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_path() / name, folder / name)
    return folder


def save_tiny_moe_lm(folder: Path, family: str = "mixtral", seed: int = 0) -> Path:
    """A tiny random *ForCausalLM of an MoE family + the word-level chat tokenizer of the
    generation tests (tests/gen_helpers.py), as a local HF folder."""
    from transformers import AutoModelForCausalLM

    from tests.gen_helpers import COLOURS, FRUITS, SPECIAL, WORDS, tiny_tokenizer

    if (folder / "config.json").is_file():
        return folder
    cfg = moe_config(family)
    cfg.vocab_size = len(SPECIAL + WORDS + COLOURS + FRUITS)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 2, 3, 0
    cfg.tie_word_embeddings = True
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # as tests/gen_helpers.tiny_lm: a sharp but trainable tied head
        lm.get_input_embeddings().weight.normal_(0.0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(str(folder))
    tiny_tokenizer(True).save_pretrained(str(folder))
    return folder
