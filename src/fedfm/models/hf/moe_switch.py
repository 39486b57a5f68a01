"""Switch Transformers (transformers' `switch_transformers`, the FedMoE paper's own FM) for FedMoE.

Experts: `mlp.experts` is a `ModuleDict` of `expert_{e}` = DenseActDense(wi, wo); router:
`mlp.router` (top-1, `classifier` = Linear(H, E), jitter noise in training, expert capacity).
Sparse blocks: every `encoder_sparse_step`-th encoder block and `decoder_sparse_step`-th decoder
block (`layer[-1].mlp` has a router); the rest are dense and carry no experts.

- Ids: an MoE block is named by its stack position, decoder blocks offset by `DECODER` (1000):
  encoder block i -> i, decoder block i -> 1000 + i (`moe_layer_ids`, `submoe.expert_of`).
- Counting: a forward hook on the router reads the one-hot dispatch after capacity
  (B, T, E) over the real tokens: encoder tokens from the encoder's attention mask, decoder
  tokens from the response mask that models/seq2seq_lm.py sets (`REAL_DEC`).
- Masked routing: a forward hook on `router.classifier` adds log 1[held] (0 / -inf) to the
  logits, so softmax, argmax and the capacity count see only held experts.
- Cut: unheld `expert_{e}` entries deleted (the kept ones keep their *global* key, so parameter
  names and flat keys carry global ids) and classifier rows index_select-ed; the experts forward
  maps the router's local index to the global key (`fedfm_ids`). Equal to masked routing.
- LoRA per expert: fedfm's LoRALinear on `wi` and `wo` of every expert.
"""

from __future__ import annotations

import types
from contextvars import ContextVar

import torch
from torch import nn

from fedfm.models.hf.family import AttnSpec, FamilySpec, register_family
from fedfm.models.hf.moe_tokens import REAL, real_mask  # noqa: F401  (one mask for every router)

DECODER = 1000
REAL_DEC: ContextVar[torch.Tensor | None] = ContextVar("fedfm_switch_real_dec", default=None)

_T5_ATTN = AttnSpec("layer.0.SelfAttention.q", "layer.0.SelfAttention.k",
                    "layer.0.SelfAttention.v", "layer.0.SelfAttention.o")


def register(moe_spec) -> None:
    register_family(FamilySpec(
        ("switch_transformers",), "encoder.block", "shared", "encoder.final_layer_norm",
        attn=_T5_ATTN, mlp=None, num_heads="num_heads", num_kv_heads=None, head_dim="d_kv",
        hidden="d_model", ffn="d_ff", num_layers="num_layers", rope=False, decoder=False,
        pooling="mean", padding_side="right", moe=moe_spec))


def switch_blocks(base: nn.Module) -> list[tuple[int, nn.Module, nn.Module]]:
    """(id, experts, router) of every sparse block of the encoder, then of the decoder."""
    out = []
    for offset, stack in ((0, "encoder"), (DECODER, "decoder")):
        st = getattr(base, stack, None)
        for i, blk in enumerate(getattr(st, "block", None) or []):
            mlp = getattr(blk.layer[-1], "mlp", None)
            if hasattr(mlp, "router") and hasattr(mlp, "experts"):
                mlp.router.fedfm_side = stack
                out.append((offset + i, mlp.experts, mlp.router))
    return out


def experts_forward(self, hidden_states, selected_experts, routing_weights):
    """HF's loop over the dispatch mask; local index j runs the expert with global id ids[j]."""
    out = torch.zeros_like(hidden_states)
    mask = selected_experts.permute(2, 1, 0)  # (E_local, 1, N)
    for j in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()[:, 0].tolist():
        idx, tok = torch.where(mask[j].squeeze(0)[None])
        y = self[f"expert_{self.fedfm_ids[j]}"](hidden_states[tok]) * routing_weights[tok, idx, None]
        out.index_add_(0, tok, y.to(hidden_states.dtype))
    return out


def _held_logits(mod, inputs, logits):
    held = getattr(mod, "fedfm_held", None)
    if held is None:
        return logits
    return logits.masked_fill(~held.to(logits.device), float("-inf"))


def router_hook(mod, inputs, out):
    """Counts over real tokens; keeps (logits, top-1 index, real) for the balance loss."""
    dispatch, _, logits = out
    st = mod.fedfm_state
    d = dispatch.reshape(-1, dispatch.shape[-1])  # (N, E)
    if mod.fedfm_side == "decoder":
        m = REAL_DEC.get()
        real = m.reshape(-1).bool() if m is not None and m.numel() == d.shape[0] else None
    else:
        real = real_mask(d.shape[0])
    sel = d if real is None else d[real.to(d.device)]
    st.load = sel.sum(0).double().cpu()
    idx = logits.reshape(-1, logits.shape[-1]).argmax(-1, keepdim=True)  # (N, 1)
    st.last = (logits.reshape(-1, logits.shape[-1]), idx, real)
    return out


def attach(rt, ex) -> None:
    rt.top_k = 1
    rt.classifier.register_forward_hook(_held_logits)
    rt.classifier.fedfm_ids = rt.fedfm_ids
    ex.forward = types.MethodType(experts_forward, ex)
    rt.register_forward_hook(router_hook)


def set_held(rt, held: torch.Tensor | None) -> None:
    rt.classifier.fedfm_held = held


def add_lora(ex, rank: int, alpha: float, g: torch.Generator) -> None:
    from fedfm.models.lora import LoRALinear

    for e in ex.fedfm_ids:
        mlp = ex[f"expert_{e}"]
        mlp.wi = LoRALinear(mlp.wi, rank, alpha, g)
        mlp.wo = LoRALinear(mlp.wo, rank, alpha, g)


def cut(ex, rt, keep: list[int]) -> None:
    """Keep the experts `keep` (global ids) of one sparse block, in place on a copy."""
    local = torch.tensor([rt.fedfm_ids.index(e) for e in keep])
    for e in [e for e in rt.fedfm_ids if e not in set(keep)]:
        del ex[f"expert_{e}"]
    c = rt.classifier
    w = c.weight
    c.weight = nn.Parameter(w.detach().index_select(0, local), requires_grad=w.requires_grad)
    if c.bias is not None:
        c.bias = nn.Parameter(c.bias.detach().index_select(0, local),
                              requires_grad=c.bias.requires_grad)
    c.out_features = len(keep)
    c.fedfm_held = None
    c.fedfm_ids = list(keep)


def expert_cost(ex, rt, j: int, submodel_memory) -> int:
    """Training bytes of local expert j: its module (+ LoRA) and its classifier row."""
    w = rt.classifier.weight
    return submodel_memory(ex[f"expert_{rt.fedfm_ids[j]}"]) + \
        w[j].numel() * w.element_size() * (4 if w.requires_grad else 1)
