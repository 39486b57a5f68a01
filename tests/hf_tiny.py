"""Tiny random Hugging Face models (hidden 32, 2 blocks) saved as local folders, one per family,
with MiniLM's tokenizer (vocab 30522). Used by the family matrix and the HF model tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
V = 30522


def configs() -> dict:
    import transformers as T

    dec = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
               pad_token_id=0, bos_token_id=101, eos_token_id=102)
    enc = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=128)
    return {
        "bert": T.BertConfig(**enc),
        "roberta": T.RobertaConfig(**{**enc, "max_position_embeddings": 130}, pad_token_id=0),
        "distilbert": T.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4,
                                         hidden_dim=64, max_position_embeddings=128),
        "llama": T.LlamaConfig(**dec),
        "qwen2": T.Qwen2Config(**dec),
        "qwen3": T.Qwen3Config(**dec, head_dim=8),
        "mistral": T.MistralConfig(**dec, sliding_window=4),
        "gemma3_text": T.Gemma3TextConfig(**dec, head_dim=8, sliding_window=4),
        "gpt2": T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                             bos_token_id=101, eos_token_id=102),
        "phi3": T.Phi3Config(**dec),  # not in the registry: the generic (auto) path
    }


def tiny_folder(root: Path, family: str, seed: int = 0) -> Path:
    """Save a tiny random `family` model (AutoModel) + MiniLM tokenizer under root/family."""
    from transformers import AutoModel

    from fedfm.models.loading import minilm_path

    folder = root / family
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    model = AutoModel.from_config(configs()[family])
    model.save_pretrained(str(folder), safe_serialization=True)
    src = minilm_path()
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, folder / name)
    return folder


DECODERS = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text", "gpt2", "phi3")


def tiny_lm_folder(root: Path, family: str, seed: int = 0) -> Path:
    """A tiny random *ForCausalLM of `family` (config as above, vocabulary and special ids of
    the word-level chat tokenizer of tests/gen_helpers) + that tokenizer, under root/lm-family."""
    from transformers import AutoModelForCausalLM

    from tests.gen_helpers import tiny_tokenizer

    folder = root / f"lm-{family}"
    if (folder / "config.json").is_file():
        return folder
    tok = tiny_tokenizer()
    cfg = configs()[family]
    cfg.vocab_size = len(tok)
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = (tok.pad_token_id, tok.bos_token_id,
                                                            tok.eos_token_id)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder
