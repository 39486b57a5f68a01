"""Any local Hugging Face folder -> HFBackbone + tokenizer (transformers, safetensors only).

Safety: `use_safetensors=True, local_files_only=True`, `trust_remote_code` never set (a folder
whose config needs remote code is refused), so model code always comes from the installed
transformers and no pickle is ever read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedfm.core.errors import ConfigError
from fedfm.models.hf.attention import cast_shared_inputs, use_fedfm_sdpa
from fedfm.models.hf.backbone import HFBackbone
from fedfm.models.hf.family import get_path

# Encoder-decoder types: classification runs their encoder alone (pooled), task = "generate"
# runs the whole seq2seq LM (models/seq2seq_lm.py).
ENCODER_ONLY = {"switch_transformers": "SwitchTransformersEncoderModel", "t5": "T5EncoderModel"}



def check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ConfigError(f"'{folder}' is not a Hugging Face model folder: no config.json.")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        bins = any(folder.glob("*.bin")) or any(folder.glob("*.pt"))
        why = " (it has pickled .bin/.pt weights, which fedfm never loads)" if bins else ""
        raise ConfigError(f"'{folder}' has no safetensors weights{why}. Convert it with "
                          "`model.save_pretrained(dir, safe_serialization=True)`.")


def set_dropout(config, p: float) -> None:
    """fedfm's `model.dropout` governs every dropout of the backbone (default 0: deterministic
    and equal to fedfm's former hand-written BERT; HF checkpoints often say 0.1)."""
    for k, v in list(vars(config).items()):
        if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop")) and "classifier" not in k:
            setattr(config, k, p)


def load_hf_config(folder: Path, dropout: float):
    from transformers import AutoConfig

    check_folder(folder)
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise ConfigError(f"'{folder}': transformers cannot read this config without remote "
                          f"code or at all ({str(e).splitlines()[0][:200]}).") from None
    set_dropout(config, dropout)
    return config


def truncate(base: torch.nn.Module, blocks_path: str, n: int | None, layers_attr: str) -> None:
    """Keep the first n blocks (model.num_layers)."""
    if n is None:
        return
    blocks = get_path(base, blocks_path)
    if not 1 <= n <= len(blocks):
        raise ConfigError(f"model.num_layers must be in 1..{len(blocks)}, got {n}.")
    parent_path, _, name = blocks_path.rpartition(".")
    parent = get_path(base, parent_path) if parent_path else base
    setattr(parent, name, torch.nn.ModuleList(list(blocks)[:n]))
    for attr in {layers_attr, "num_hidden_layers"}:
        if hasattr(base.config, attr):
            setattr(base.config, attr, n)


def load_hf_backbone(folder: Path, num_layers: int | None = None, dropout: float = 0.0,
                     dtype: torch.dtype | None = None, task: str = "classify",
                     sdpa_fp32: bool = True) -> HFBackbone:
    """The base model of `folder` (no LM head) wrapped as an HFBackbone. `task="generate"`
    loads the causal LM and keeps it as `backbone.lm` (a plain attribute). `sdpa_fp32`: SDPA
    models use `fedfm_sdpa` (attention in fp32 on the CPU under bf16 autocast, see attention.py)."""
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = load_hf_config(folder, dropout)
    cls = AutoModelForCausalLM if task == "generate" else AutoModel
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    if seq2seq:
        cls = _seq2seq_class(config, task)
    try:
        model = cls.from_pretrained(str(folder), config=config, use_safetensors=True,
                                    local_files_only=True, dtype=dtype or torch.float32)
    except (ValueError, OSError, KeyError, SafetensorError) as e:  # corrupt weights included
        raise ConfigError(f"'{folder}': transformers could not load the model "
                          f"({str(e).splitlines()[0][:200]}).") from None
    if sdpa_fp32:
        try:
            use_fedfm_sdpa(model)
        except (ValueError, ImportError):  # keep the model's own attention implementation
            pass
    lm = None
    if task == "generate" and seq2seq:  # the whole model is the backbone (encoder + decoder)
        return wrap_seq2seq(model)
    if task == "generate":
        lm, model = model, model.base_model
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # fedfm pools itself; BERT's pooler is unused work
    backbone = wrap(model, num_layers, lm)
    if sdpa_fp32:  # fedfm's CPU speed-ups (attention.py): cast shared block inputs once
        cast_shared_inputs(backbone)
    return backbone


def wrap(model: torch.nn.Module, num_layers: int | None = None, lm=None) -> HFBackbone:
    from fedfm.models.hf.family import resolve

    family = resolve(model)
    truncate(model, family.blocks, num_layers, family.num_layers)
    backbone = HFBackbone(model, family)
    if lm is not None:
        object.__setattr__(backbone, "lm", lm)
    return backbone


def _seq2seq_class(config, task: str):
    import transformers

    if task == "generate":
        return transformers.AutoModelForSeq2SeqLM
    name = ENCODER_ONLY.get(config.model_type)
    if name is None:
        raise ConfigError(f"model type '{config.model_type}' is an encoder-decoder that fedfm "
                          "can run with task = \"generate\" only (no encoder-only class known).")
    return getattr(transformers, name)


def wrap_seq2seq(model) -> HFBackbone:
    """An encoder-decoder LM as one backbone: `blocks` = the encoder's, but LoRA and `block_of`
    reach the decoder blocks too (encoder.block.i / decoder.block.i)."""
    import re

    backbone = wrap(model, None, model)
    backbone._block_re = re.compile(r"(?:^|\.)(?:encoder|decoder)\.block\.(\d+)(?:\.|$)")
    return backbone


@dataclass
class HFTokenizer:
    """Fixed-length tokenisation with a transformers tokenizer: texts -> ids, mask (N, T).

    `inner` is the transformers tokenizer (chat template, decode). pad = the tokenizer's pad
    token, else eos, else unk."""

    inner: object
    max_length: int

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.inner(list(texts), padding="max_length", truncation=True,
                         max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()


def load_hf_tokenizer(folder: Path, max_length: int, padding_side: str = "right") -> HFTokenizer:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise ConfigError(f"'{folder}': no usable tokenizer "
                          f"({str(e).splitlines()[0][:200]}).") from None
    ensure_pad(tok, str(folder))
    tok.padding_side = padding_side
    return HFTokenizer(tok, max_length)


def ensure_pad(tok, where: str = "the tokenizer") -> None:
    """Decoder tokenizers often have no pad token: pad with eos (else unk)."""
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise ConfigError(f"'{where}': the tokenizer has no pad, eos or unk token to pad with.")
        tok.pad_token = fallback
