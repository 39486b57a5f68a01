"""Tiny decoder LMs and a word-level tokenizer built offline, for the generation tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

COLOURS = ["red", "yellow", "green", "purple", "white", "black", "pink", "brown"]
FRUITS = ["apple", "banana", "lime", "grape", "coconut", "olive", "peach", "date"]
WORDS = ["which", "fruit", "is", "name", "the", "a", "one", "tell", "me", "of", "colour", "?"]
SPECIAL = ["<pad>", "<unk>", "<bos>", "<end>", "<user>", "<assistant>", "<system>"]
CHAT = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}"
        "{% if m['role'] == 'assistant' %} <end>{% endif %} {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}")


def tiny_tokenizer(chat: bool = True, padding_side: str = "right"):
    """A word-level PreTrainedTokenizerFast (with a chat template when `chat`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS + COLOURS + FRUITS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
        eos_token="<end>", additional_special_tokens=["<user>", "<assistant>", "<system>"],
        padding_side=padding_side,
    )
    if chat:
        fast.chat_template = CHAT
    return fast


def tiny_lm(family: str = "llama", vocab: int | None = None, seed: int = 0):
    """A random 2-block decoder LM (hidden 32) of `family`: llama | gpt2."""
    import transformers as tf

    vocab = vocab or len(SPECIAL + WORDS + COLOURS + FRUITS)
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                            bos_token_id=2, eos_token_id=3, pad_token_id=0)
        lm = tf.GPT2LMHeadModel(cfg)
    else:
        cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                             pad_token_id=0, tie_word_embeddings=True)
        lm = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():  # unit-norm-ish token vectors: the tied, frozen LM head can be sharp
        lm.get_input_embeddings().weight.normal_(0.0, 0.3)
    return lm.eval()


def save_tiny_lm(folder: Path, family: str = "llama", chat: bool = True) -> Path:
    """Write a tiny LM + tokenizer as a local HF folder (safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_lm(family).save_pretrained(str(folder))
    tiny_tokenizer(chat).save_pretrained(str(folder))
    return folder


def colour_records(n: int = 96, seed: int = 0) -> list[dict]:
    """A trivial mapping: "which fruit is <colour> ?" -> "<fruit>" (8 pairs, varied wording)."""
    g = torch.Generator().manual_seed(seed)
    forms = ["fruit {c}"]
    rows = []
    for i in range(n):
        k = int(torch.randint(len(COLOURS), (1,), generator=g))
        form = forms[i % len(forms)]
        rows.append({"prompt": form.format(c=COLOURS[k]), "response": FRUITS[k]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
