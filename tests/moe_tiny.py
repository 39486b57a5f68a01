"""Tiny random Hugging Face MoE models (hidden 32, 2 MoE blocks, 4 experts, top-2) saved as local
folders with MiniLM's tokenizer, one per fused-expert family."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.hf_tiny import TOKENIZER_FILES, V

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")


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
    if family.startswith("deepseek"):
        return deepseek_config(family, base)
    if family == "switch_transformers":
        return switch_config()
    return T.OlmoeConfig(**base, num_experts=4, intermediate_size=32)


def switch_config(vocab: int = V, sparse_step: int = 1):
    """Encoder-decoder, 2 + 2 blocks, 4 experts per sparse block (every block sparse at step 1;
    step 2: blocks 1 of each stack), top-1 router with capacity and jitter as the checkpoints."""
    import transformers as T

    return T.SwitchTransformersConfig(
        vocab_size=vocab, d_model=32, d_ff=32, d_kv=8, num_heads=4, num_layers=2,
        num_decoder_layers=2, num_experts=4, expert_capacity=64,
        encoder_sparse_step=sparse_step, decoder_sparse_step=sparse_step, pad_token_id=0,
        eos_token_id=102, decoder_start_token_id=0, router_jitter_noise=0.01)


def deepseek_config(family: str, base: dict):
    """3 blocks: block 0 dense (first_k_dense_replace), blocks 1-2 MoE with 4 routed experts in
    2 groups (1 group chosen per token), 1 shared expert; tiny MLA attention."""
    import transformers as T

    mla = dict(q_lora_rank=None, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
               v_head_dim=8, head_dim=4, num_key_value_heads=4)
    moe = dict(n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=16,
               intermediate_size=32, first_k_dense_replace=1, n_group=2, topk_group=1,
               routed_scaling_factor=1.5)
    cfg = {**base, **mla, **moe, "num_hidden_layers": 3}
    if family == "deepseek_v2":
        return T.DeepseekV2Config(**cfg, topk_method="group_limited_greedy")
    return T.DeepseekV3Config(**cfg, norm_topk_prob=True)


def moe_folder(root: Path, family: str, seed: int = 0) -> Path:
    from transformers import AutoModel

    from fedfm.models.loading import minilm_path

    folder = root / family
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    cfg = moe_config(family)
    if family == "switch_transformers":  # the full seq2seq LM (classification: its encoder)
        from transformers import SwitchTransformersForConditionalGeneration

        model = SwitchTransformersForConditionalGeneration(cfg)
    else:
        model = AutoModel.from_config(cfg)
    _randomise_routers(model)
    model.save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_path() / name, folder / name)
    return folder


def save_tiny_moe_lm(folder: Path, family: str = "mixtral", seed: int = 0) -> Path:
    """A tiny random *ForCausalLM of an MoE family + the word-level chat tokenizer of the
    generation tests (tests/gen_helpers.py), as a local HF folder."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from tests.gen_helpers import COLOURS, FRUITS, SPECIAL, WORDS, tiny_tokenizer

    if (folder / "config.json").is_file():
        return folder
    cfg = moe_config(family)
    cfg.vocab_size = len(SPECIAL + WORDS + COLOURS + FRUITS)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 2, 3, 0
    cfg.tie_word_embeddings = True
    torch.manual_seed(seed)
    seq2seq = family == "switch_transformers"
    lm = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_config(cfg)
    _randomise_routers(lm)
    with torch.no_grad():  # as tests/gen_helpers.tiny_lm: a sharp but trainable tied head
        lm.get_input_embeddings().weight.normal_(0.0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(str(folder))
    tiny_tokenizer(True).save_pretrained(str(folder))
    return folder


def _randomise_routers(model) -> None:
    """HF initialises DeepSeek routers (and V3's correction bias) to zero: every token would tie.
    Random rows (and a random bias) make the routing, the groups and the tests meaningful."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight") and not p.abs().sum():
                p.normal_(0.0, 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0.0, 0.1)
