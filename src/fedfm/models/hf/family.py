"""Model families: one declarative row per Hugging Face `model_type`, no forward code.

A `FamilySpec` names, for the *runtime* module tree of the pinned transformers (5.x), where the
transformer blocks are, the role of each linear layer inside a block (q/k/v/o, up/gate/down,
or a fused qkv / gate_up), which config fields hold the head geometry, and the defaults fedfm
uses (pooling, LoRA targets, padding side). Algorithms work from this description with hooks
and module swaps, as peft does with its per-model name maps.

Adding a family = one `register_family(FamilySpec(...))` row. A model whose type is not
registered still runs FedAvg/FedProx/FedPer/local/FedMS through `auto_family`: its block list is
the `nn.ModuleList` of `num_hidden_layers` children of one class, and LoRA goes on every linear
(or HF Conv1D) layer inside the blocks (peft's "all-linear").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from fedfm.core.errors import ConfigError


@dataclass(frozen=True)
class AttnSpec:
    """Attention projections, as module paths inside one block."""

    q: str | None
    k: str | None
    v: str | None
    o: str
    qkv: str | None = None  # fused projection (gpt2 "attn.c_attn", phi3 "self_attn.qkv_proj")
    qkv_order: tuple[str, ...] = ("q", "k", "v")  # segment order on the fused output axis
    conv1d: bool = False  # HF Conv1D: weight stored (in, out)
    qk_norms: tuple[str, ...] = ()  # per-head_dim norms (qwen3/gemma3 q_norm, k_norm)


@dataclass(frozen=True)
class MLPSpec:
    """Feed-forward projections, as module paths inside one block."""

    up: str | None
    down: str
    gate: str | None = None  # gated MLP (SwiGLU / GeGLU)
    gate_up: str | None = None  # fused [gate; up] (phi3 "mlp.gate_up_proj")
    conv1d: bool = False


@dataclass(frozen=True)
class FamilySpec:
    """One model family. Paths: `blocks`/`embeddings`/`final_norm` from the base model's root;
    attention/MLP paths from inside one block. Config fields name the geometry."""

    model_types: tuple[str, ...]
    blocks: str
    embeddings: str
    final_norm: str | None
    attn: AttnSpec | None
    mlp: MLPSpec | None
    num_heads: str = "num_attention_heads"
    num_kv_heads: str | None = "num_key_value_heads"  # None = multi-head (kv = heads)
    head_dim: str | None = "head_dim"  # absent in the config: hidden // heads
    hidden: str = "hidden_size"
    ffn: str = "intermediate_size"
    num_layers: str = "num_hidden_layers"
    rope: bool = True  # forbids within-head permutation and head_dim cuts (RaFFM)
    decoder: bool = True  # causal LM family (last-token pooling, left padding for generation)
    pooling: str = "last"  # mean | cls | last
    padding_side: str = "left"  # for generation; classification always pads right
    lora_targets: tuple[str, ...] = ("q", "v")  # roles (peft's per-model defaults)
    fixups: dict[str, Any] = field(default_factory=dict)  # per-block attrs to fix after slicing
    moe: Any = None  # MoESpec (FedMoE on real MoE checkpoints, a later issue)
    inputs: str = "text"  # text | pixels (vision families)
    ffn_unset_ratio: int | None = None  # config leaves `ffn` unset (None): FFN = hidden * this
    registered: bool = True  # False for auto-detected families

    @property
    def name(self) -> str:
        return self.model_types[0]

    def roles(self) -> dict[str, str]:
        """Role -> module path inside a block, for the roles this family has."""
        out: dict[str, str] = {}
        for spec in (self.attn, self.mlp):
            if spec is None:
                continue
            for role in ("q", "k", "v", "o", "qkv", "up", "down", "gate", "gate_up"):
                path = getattr(spec, role, None)
                if isinstance(path, str):
                    out[role] = path
        return out

    def config_value(self, config, attr: str | None, default=None):
        return getattr(config, attr, default) if attr else default


FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family row; every `model_type` it lists maps to it (later rows win)."""
    for t in spec.model_types:
        FAMILIES[t] = spec
    return spec


_BERT_ATTN = AttnSpec("attention.self.query", "attention.self.key", "attention.self.value",
                      "attention.output.dense")
_BERT_MLP = MLPSpec("intermediate.dense", "output.dense")
_ENCODER = dict(num_kv_heads=None, head_dim=None, rope=False, decoder=False, pooling="mean",
                padding_side="right", final_norm=None)

register_family(FamilySpec(("bert",), "encoder.layer", "embeddings", attn=_BERT_ATTN,
                           mlp=_BERT_MLP, **_ENCODER))
register_family(FamilySpec(("roberta", "xlm-roberta"), "encoder.layer", "embeddings",
                           attn=_BERT_ATTN, mlp=_BERT_MLP, **_ENCODER))
register_family(FamilySpec(
    ("distilbert",), "transformer.layer", "embeddings",
    attn=AttnSpec("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
    mlp=MLPSpec("ffn.lin1", "ffn.lin2"), num_heads="n_heads", hidden="dim", ffn="hidden_dim",
    num_layers="n_layers", **_ENCODER))

_LLAMA_ATTN = AttnSpec("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "self_attn.o_proj")
_GATED = MLPSpec("mlp.up_proj", "mlp.down_proj", gate="mlp.gate_proj")
register_family(FamilySpec(("llama", "mistral", "qwen2"), "layers", "embed_tokens", "norm",
                           attn=_LLAMA_ATTN, mlp=_GATED))
register_family(FamilySpec(
    ("qwen3",), "layers", "embed_tokens", "norm", mlp=_GATED,
    attn=replace(_LLAMA_ATTN, qk_norms=("self_attn.q_norm", "self_attn.k_norm"))))
register_family(FamilySpec(
    ("gemma3_text", "gemma2", "gemma"), "layers", "embed_tokens", "norm", mlp=_GATED,
    attn=replace(_LLAMA_ATTN, qk_norms=("self_attn.q_norm", "self_attn.k_norm"))))
register_family(FamilySpec(
    ("gpt2",), "h", "wte", "ln_f",
    attn=AttnSpec(None, None, None, "attn.c_proj", qkv="attn.c_attn", conv1d=True),
    mlp=MLPSpec("mlp.c_fc", "mlp.c_proj", conv1d=True), num_heads="n_head", num_kv_heads=None,
    head_dim=None, hidden="n_embd", ffn="n_inner", num_layers="n_layer", rope=False,
    lora_targets=("qkv",), fixups={"attn.split_size": "q_rows"}, ffn_unset_ratio=4))

# Vision transformers (issue #17): pixel_values in, [CLS] (+ DeiT's distillation token) +
# patch tokens out; absolute positions (within-head q/k permutation is function-preserving).
_VIT_ATTN = AttnSpec("attention.q_proj", "attention.k_proj", "attention.v_proj",
                     "attention.o_proj")
_VISION = dict(num_kv_heads=None, head_dim=None, rope=False, decoder=False, pooling="cls",
               padding_side="right", inputs="pixels", final_norm="layernorm")
register_family(FamilySpec(("vit",), "layers", "embeddings", attn=_VIT_ATTN,
                           mlp=MLPSpec("mlp.fc1", "mlp.fc2"), **_VISION))
register_family(FamilySpec(("deit",), "layers", "embeddings", attn=_VIT_ATTN,
                           mlp=MLPSpec("mlp.fc1", "mlp.fc2"), **_VISION))
register_family(FamilySpec(("dinov2",), "encoder.layer", "embeddings", attn=_VIT_ATTN,
                           mlp=MLPSpec("mlp.fc1", "mlp.fc2"), ffn="mlp_ratio", **_VISION))


def get_path(root: nn.Module, path: str) -> nn.Module | None:
    """`root.a.b.0.c` by a dotted path, or None where it does not exist."""
    node = root
    for part in path.split(".") if path else []:
        node = getattr(node, part, None) if not part.isdigit() else _index(node, int(part))
        if node is None:
            return None
    return node


def _index(node, i: int):
    try:
        return node[i]
    except (TypeError, IndexError, KeyError):
        return None


def num_layers_of(config) -> int | None:
    for attr in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        v = getattr(config, attr, None)
        if isinstance(v, int):
            return v
    return None


def auto_blocks(model: nn.Module) -> str:
    """Path of the block list: the ModuleList of `num_hidden_layers` children of one class.

    Exactly one candidate must exist (encoder-decoder models have two and need a registry row).
    """
    n = num_layers_of(model.config)
    found = [name for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and (n is None or len(m) == n)
             and len({type(c) for c in m}) == 1 and any(True for _ in m[0].parameters())]
    found = [p for p in found if not any(p.startswith(q + ".") for q in found)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise ConfigError(
            f"Model type '{model.config.model_type}' is not in fedfm's family registry and its "
            f"block list cannot be found automatically: {what} candidate lists of "
            f"{n} identical blocks. Add a FamilySpec row (docs/models.md)."
        )
    return found[0]


def auto_family(model: nn.Module) -> FamilySpec:
    """A family for an unregistered model: blocks found automatically, roles unknown, LoRA on
    every linear layer inside the blocks."""
    mt = getattr(model.config, "model_type", "unknown")
    dec = is_decoder(model.config)
    return FamilySpec((mt,), auto_blocks(model), "", None, None, None,
                      lora_targets=("all-linear",), registered=False, decoder=dec,
                      pooling="last" if dec else "mean",
                      padding_side="left" if dec else "right")


def is_decoder(config) -> bool:
    """Causal (decoder-only) model: not a masked-LM encoder. Encoders (BERT-like) are in
    transformers' masked-LM mapping; GPT-style and Llama-style decoders are not."""
    from transformers import MODEL_FOR_MASKED_LM_MAPPING

    return type(config) not in MODEL_FOR_MASKED_LM_MAPPING


def resolve(model: nn.Module) -> FamilySpec:
    """The registry row for `model.config.model_type`, checked against the loaded model (block
    list and every role path exist), or an auto-detected family when the type is unregistered."""
    mt = getattr(model.config, "model_type", None)
    spec = FAMILIES.get(mt)
    if spec is None:
        return auto_family(model)
    blocks = get_path(model, spec.blocks)
    n = spec.config_value(model.config, spec.num_layers)
    if not isinstance(blocks, nn.ModuleList) or (n is not None and len(blocks) != n):
        raise ConfigError(f"'{mt}' model does not match fedfm's family row: no block list "
                          f"'{spec.blocks}' of {n} blocks (transformers version drift?).")
    missing = [p for p in spec.roles().values() if get_path(blocks[0], p) is None]
    if missing:
        raise ConfigError(f"'{mt}' model does not match fedfm's family row: block 0 has no "
                          f"'{missing[0]}' (transformers version drift?).")
    return spec
