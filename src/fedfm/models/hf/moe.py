"""FedMoE on real Hugging Face MoE models (transformers 5.25; design note section 5).

Families with experts stored as fused 3-D tensors: mixtral, qwen2_moe, qwen3_moe, olmoe —
`experts.gate_up_proj (E, 2I, H)` = [gate; up], `experts.down_proj (E, H, I)`, router
`gate.weight (E, H)` returning `(logits, scores, top-k indices)`.

- **Counting**: a forward hook on every router records, over the real (non-pad) tokens of the
  batch, how many top-k assignments each expert got (`counts[i, e]`; rows sum to tokens · k).
- **Masked routing** (`set_held`): the hook re-routes over the held set from the router's own
  logits: `softmax(logits + log 1[held])`, top-k with k = min(top_k, |held|), renormalised as the
  family does (always for Mixtral, `norm_topk_prob` otherwise; with norm_topk_prob = False the
  weights are the held-set softmax, i.e. renormalised over the held experts).
- **Cutting** (`cut`): a copy whose expert tensors and router rows are `index_select`-ed to the
  held experts (frozen dense tensors shared with the source, not copied), so the client really
  allocates only those; `fedfm_ids` maps local rows to global expert ids. Equal to masked routing.
- **Per-expert LoRA**: `ExpertLoRA` per held expert in `experts.fedfm_lora[str(e)]`, applied by an
  experts forward registered in transformers' `ExpertsInterface` as "fedfm_lora" (HF's eager loop
  + `x A^T B^T · scale` on gate_up and down). Parameter names carry the global expert id, so flat
  keys `layers.{i}.mlp.experts.fedfm_lora.{e}.*` and router rows `layers.{i}.mlp.gate.weight.{e}`
  make per-expert modular aggregation leave unheld experts bit-identical.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedfm.core.errors import ConfigError
from fedfm.models.hf import moe_switch as S
from fedfm.models.hf.family import AttnSpec, FamilySpec, get_path, register_family
from fedfm.models.hf.moe_groups import KINDS, attach_groups, cut_router

IMPL = "fedfm_lora"
_REAL = S.REAL  # the real-token mask of the current forward (defined with moe_switch's)


@dataclass(frozen=True)
class MoESpec:
    block: str = "mlp"  # MoE module inside a decoder block
    router: str = "gate"
    experts: str = "experts"
    norm_topk: str | bool = "norm_topk_prob"  # config attribute, or a constant (Mixtral: True)
    num_experts: str = "num_experts"
    top_k: str = "num_experts_per_tok"
    shared: tuple[str, ...] = ()  # always-active shared experts: never cut, LoRA averaged as dense
    router_kind: str = "softmax_topk"  # | "deepseek_v2" | "deepseek_v3" (moe_groups.py)
    storage: str = "fused3d"  # | "moduledict" (switch_transformers, moe_switch.py)


_SHARED_MLP = ("gate_proj", "up_proj", "down_proj")


_ATTN = AttnSpec("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MOE_SPECS = {
    "mixtral": MoESpec(norm_topk=True, num_experts="num_local_experts"),
    "qwen2_moe": MoESpec(shared=("shared_expert", "shared_expert_gate")),
    "qwen3_moe": MoESpec(),
    "olmoe": MoESpec(),
    # DeepSeek: shared experts, group-limited routing, dense first layers, MLA attention
    "deepseek_v2": MoESpec(shared=("shared_experts",), router_kind="deepseek_v2"),
    "deepseek_v3": MoESpec(num_experts="n_routed_experts", shared=("shared_experts",),
                           router_kind="deepseek_v3"),
}
# switch_transformers: its own family row (encoder-decoder), moe_switch.py
SWITCH = MoESpec(block="", router="router", storage="moduledict", norm_topk=True)
# MLA: q_proj exists only without q_lora_rank (else q_a_proj/q_b_proj); kv_b_proj always
_MLA = AttnSpec(None, None, "self_attn.kv_b_proj", "self_attn.o_proj")
for _t, _m in MOE_SPECS.items():
    _mla = _t.startswith("deepseek")
    register_family(FamilySpec((_t,), "layers", "embed_tokens", "norm",
                               attn=_MLA if _mla else _ATTN, mlp=None, moe=_m,
                               lora_targets=("v", "o") if _mla else ("q", "v")))
MOE_SPECS["switch_transformers"] = SWITCH
S.register(SWITCH)


def is_moe(model_type: str | None) -> bool:
    return model_type in MOE_SPECS


# ---------------------------------------------------------------------------------- layers


def moe_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(experts, router) of every MoE block, in block order (`model`: a Classifier, CausalLM,
    HFBackbone or HF base model). Dense blocks (DeepSeek's first_k_dense_replace, Qwen2-MoE's
    mlp_only_layers) are skipped; `moe_layer_ids` gives the block index of each entry."""
    return [(ex, rt) for _, ex, rt in _moe_blocks(model)]


def moe_layer_ids(model: nn.Module) -> list[int]:
    """Block index of each MoE block (the `layers.{i}` of its flat keys)."""
    return [i for i, _, _ in _moe_blocks(model)]


def _moe_blocks(model: nn.Module) -> list[tuple[int, nn.Module, nn.Module]]:
    bb = model.backbone if hasattr(model, "backbone") else model
    fam = getattr(bb, "family", None)
    spec = fam.moe if fam is not None else None
    if spec is None:
        raise ConfigError("the model is not a supported Hugging Face MoE "
                          f"({', '.join(MOE_SPECS)}).")
    if spec.storage == "moduledict":
        return S.switch_blocks(bb.base if hasattr(bb, "base") else bb)
    out = []
    for i, blk in enumerate(bb.blocks):
        moe = get_path(blk, spec.block)
        ex, rt = getattr(moe, spec.experts, None), getattr(moe, spec.router, None)
        if ex is not None and rt is not None and hasattr(ex, "gate_up_proj"):
            out.append((i, ex, rt))
    if not out:
        raise ConfigError(f"the '{fam.name}' model has no MoE block (every block is dense).")
    return out


def num_experts(model: nn.Module) -> int:
    return len(moe_layers(model)[0][1].fedfm_ids)


# ---------------------------------------------------------------------------------- LoRA


class ExpertLoRA(nn.Module):
    """LoRA on one expert: gate_up (2I, H) += scale·B_gu A_gu, down (H, I) += scale·B_d A_d."""

    def __init__(self, hidden: int, inter: int, rank: int, alpha: float, g: torch.Generator):
        super().__init__()
        self.scale = alpha / rank

        def a(n_in):
            b = 1.0 / math.sqrt(n_in)
            return nn.Parameter(torch.empty(rank, n_in).uniform_(-b, b, generator=g))

        self.gu_A, self.gu_B = a(hidden), nn.Parameter(torch.zeros(2 * inter, rank))
        self.d_A, self.d_B = a(inter), nn.Parameter(torch.zeros(hidden, rank))

    def gate_up(self, x):
        return F.linear(F.linear(x, self.gu_A), self.gu_B) * self.scale

    def down(self, x):
        return F.linear(F.linear(x, self.d_A), self.d_B) * self.scale


def experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """HF's eager experts loop with per-expert LoRA (global id `fedfm_ids[e]`)."""
    out = torch.zeros_like(hidden_states)
    lora = getattr(self, "fedfm_lora", None)
    ids = getattr(self, "fedfm_ids", None) or list(range(self.num_experts))
    for e in torch.unique(top_k_index).tolist():
        if e >= self.num_experts:
            continue
        pos, tok = torch.where((top_k_index == e).T)
        x = hidden_states[tok]
        gu = F.linear(x, self.gate_up_proj[e])
        ad = lora[str(ids[e])] if lora is not None and str(ids[e]) in lora else None
        if ad is not None:
            gu = gu + ad.gate_up(x)
        gate, up = gu.chunk(2, dim=-1)
        y = self.act_fn(gate) * up
        d = F.linear(y, self.down_proj[e]) + (ad.down(y) if ad is not None else 0)
        out.index_add_(0, tok, (d * top_k_weights[tok, pos, None]).to(out.dtype))
    return out


def _register_impl() -> None:
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(IMPL, experts_forward)


# ---------------------------------------------------------------------------------- routing


class RouterState:
    """Per router: held mask (local ids, None = all), last routing, counts (global ids)."""

    def __init__(self, ids: list[int], norm: bool):
        self.ids, self.norm, self.held = ids, norm, None
        self.last = None  # (logits, idx, real) of the last forward
        self.load = torch.zeros(len(ids), dtype=torch.float64)  # last forward, local ids


_real_mask = S.real_mask


def _router_hook(mod, inputs, out):
    st: RouterState = mod.fedfm_state
    logits, scores, idx = out
    if st.held is not None and getattr(mod, "fedfm_kind", None) is None:  # softmax_topk
        logits = logits.masked_fill(~st.held.to(logits.device), float("-inf"))
        probs = torch.softmax(logits.float(), dim=-1)
        top, idx = torch.topk(probs, min(mod.top_k, int(st.held.sum())), dim=-1)
        if st.norm:
            top = top / top.sum(-1, keepdim=True)
        scores = top.to(scores.dtype)
    real = _real_mask(idx.shape[0])
    sel = idx if real is None else idx[real.to(idx.device)]
    sel = sel[sel < len(st.ids)]  # DeepSeek's sentinel slots (moe_groups.py) run no expert
    st.load = torch.bincount(sel.reshape(-1).cpu(), minlength=len(st.ids)).double()
    st.last = (logits, idx, real)
    return logits, scores, idx


def _mask_pre_hook(mod, args, kwargs):
    _REAL.set(kwargs.get("attention_mask"))


def attach(model: nn.Module, backbone) -> None:
    """Router hooks, global ids, the real-token pre-hook and the LoRA experts forward."""
    _register_impl()
    cfg = backbone.config
    spec = backbone.family.moe
    norm = spec.norm_topk if isinstance(spec.norm_topk, bool) else bool(
        getattr(cfg, spec.norm_topk, False))
    for ex, rt in moe_layers(backbone):
        ids = list(range(ex.num_experts))
        ex.fedfm_ids, rt.fedfm_ids = ids, list(ids)
        rt.fedfm_state = RouterState(list(ids), norm)
        if spec.storage == "moduledict":
            S.attach(rt, ex)
            continue
        if spec.router_kind in KINDS:
            attach_groups(rt, spec.router_kind)
        rt.register_forward_hook(_router_hook)
    backbone.base.register_forward_pre_hook(_mask_pre_hook, with_kwargs=True)
    if spec.storage == "fused3d":
        backbone.base.set_experts_implementation(IMPL)


def add_expert_lora(backbone, rank: int, alpha: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for ex, _ in moe_layers(backbone):
        if not hasattr(ex, "gate_up_proj"):  # switch: LoRALinear on each expert's wi, wo
            S.add_lora(ex, rank, alpha, g)
            continue
        _, two_i, h = ex.gate_up_proj.shape
        ex.fedfm_lora = nn.ModuleDict(
            {str(e): ExpertLoRA(h, two_i // 2, rank, alpha, g) for e in ex.fedfm_ids})


def add_shared_lora(backbone, rank: int, alpha: float, seed: int) -> list[str]:
    """LoRA on the shared experts' linears (qwen2_moe `shared_expert`, DeepSeek
    `shared_experts`): always held by every client, averaged over all like attention LoRA."""
    from fedfm.models.lora import inject_lora

    spec = backbone.family.moe
    targets = tuple(f"{spec.block}.{s}.{n}" for s in spec.shared for n in _SHARED_MLP)
    return inject_lora(backbone, targets, rank, alpha, seed) if targets else []


def set_held(model: nn.Module, held: list[list[int]] | None) -> None:
    """Masked routing over `held` (global ids per MoE block); None: every expert."""
    for (_, rt), h in zip(moe_layers(model), held or [None] * len(moe_layers(model))):
        st = rt.fedfm_state
        st.held = None if h is None else torch.tensor([e in set(h) for e in st.ids])
        if hasattr(rt, "classifier"):  # switch: masked on the logits (moe_switch.py)
            S.set_held(rt, st.held)


def loads(model: nn.Module) -> torch.Tensor:
    """(L, E_global) token->expert assignments of the last forward over real tokens."""
    rows = []
    for _, rt in moe_layers(model):
        st = rt.fedfm_state
        row = torch.zeros(num_experts_global(rt), dtype=torch.float64)
        row[torch.tensor(st.ids)] = st.load
        rows.append(row)
    return torch.stack(rows)


def num_experts_global(rt) -> int:
    return int(getattr(rt, "fedfm_num_global", len(rt.fedfm_ids)))


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Σ_blocks Switch balance loss over the held experts and real tokens of the last forward:
    |S| Σ_e f_e P_e, f_e = share of top-k assignments, P_e = mean router probability."""
    total = torch.zeros(())
    for _, rt in moe_layers(model):
        if rt.fedfm_state.last is None:
            continue
        logits, idx, real = rt.fedfm_state.last
        probs = torch.softmax(logits.float(), dim=-1)
        if real is not None:
            probs, idx = probs[real], idx[real]
        n_held = int(torch.isfinite(logits[0]).sum()) if logits.numel() else 1
        idx = idx[idx < logits.shape[-1]]  # without DeepSeek's sentinel slots
        f = torch.bincount(idx.reshape(-1), minlength=logits.shape[-1]).float()
        f = f / f.sum().clamp_min(1.0)
        total = total + n_held * (f * probs.mean(0)).sum().cpu()
    return total


def z_coef(model: nn.Module) -> float:
    """The family's router z-loss coefficient: `config.router_z_loss_coef` (Switch
    Transformers, as its own training adds it); 0.0 for families whose config has none."""
    bb = model.backbone if hasattr(model, "backbone") else model
    return float(getattr(getattr(bb, "config", None), "router_z_loss_coef", 0.0) or 0.0)


def z_loss(model: nn.Module) -> torch.Tensor:
    """Σ_blocks router z-loss (ST-MoE, Zoph et al. 2022; HF's `router_z_loss_func`) over the real
    tokens of the last forward: mean_t (log Σ_{e ∈ held} exp z_{t,e})², z = router logits. Unheld
    experts' logits are -inf (masked) or absent (cut), so only held experts' rows count."""
    total = torch.zeros(())
    for _, rt in moe_layers(model):
        if rt.fedfm_state.last is None:
            continue
        logits, _, real = rt.fedfm_state.last
        if real is not None:
            logits = logits[real.to(logits.device)]
        if logits.shape[0]:
            total = total + (torch.logsumexp(logits.float(), dim=-1) ** 2).mean().cpu()
    return total


# ---------------------------------------------------------------------------------- cutting


def cut(model: nn.Module, held: list[list[int]]) -> nn.Module:
    """A copy holding only the experts in `held` (global ids per block): expert tensors and router
    rows index_select-ed, LoRA of unheld experts dropped; frozen tensors shared, not copied."""
    for _, rt in moe_layers(model):
        rt.fedfm_state.last = None  # holds graph tensors, which deepcopy refuses
    memo = {id(p): p for p in model.parameters() if not p.requires_grad}
    sub = copy.deepcopy(model, memo)
    for (ex, rt), keep in zip(moe_layers(sub), held):
        if hasattr(rt, "classifier"):
            S.cut(ex, rt, keep)
            _recount(ex, rt, keep)
            continue
        local = torch.tensor([rt.fedfm_ids.index(e) for e in keep])
        for name in ("gate_up_proj", "down_proj"):
            w = getattr(ex, name)
            setattr(ex, name, nn.Parameter(w.detach().index_select(0, local),
                                           requires_grad=w.requires_grad))
        w = rt.weight
        rt.weight = nn.Parameter(w.detach().index_select(0, local), requires_grad=w.requires_grad)
        if hasattr(rt, "fedfm_groups"):
            cut_router(rt, local)
        rt.top_k = min(rt.top_k, len(keep))
        _recount(ex, rt, keep)
        if hasattr(ex, "fedfm_lora"):
            for k in [k for k in ex.fedfm_lora if int(k) not in set(keep)]:
                del ex.fedfm_lora[k]
    return sub


def _recount(ex, rt, keep: list[int]) -> None:
    rt.fedfm_num_global = num_experts_global(rt)
    ex.num_experts = rt.num_experts = len(keep)
    ex.fedfm_ids = rt.fedfm_ids = list(keep)
    st = rt.fedfm_state
    st.ids, st.held, st.last = list(keep), None, None
    st.load = torch.zeros(len(keep), dtype=torch.float64)


def expert_costs(model: nn.Module, submodel_memory) -> list[list[int]]:
    """Training bytes of each expert: its tensor slices (x4 if trainable), its LoRA, its router
    row — what `cut` saves by dropping it."""
    costs = []
    for ex, rt in moe_layers(model):
        if hasattr(rt, "classifier"):
            costs.append([S.expert_cost(ex, rt, j, submodel_memory)
                          for j in range(len(rt.fedfm_ids))])
            continue
        row = []
        for e in range(ex.num_experts):
            c = 0
            for w in (ex.gate_up_proj, ex.down_proj, rt.weight):
                c += w[e].numel() * w.element_size() * (4 if w.requires_grad else 1)
            lora = getattr(ex, "fedfm_lora", {})
            if str(ex.fedfm_ids[e]) in lora:
                c += submodel_memory(lora[str(ex.fedfm_ids[e])])
            row.append(c)
        costs.append(row)
    return costs


def router_weight(rt) -> nn.Parameter:
    """The (E, H) routing matrix: `weight`, or Switch's `classifier.weight`."""
    return rt.classifier.weight if hasattr(rt, "classifier") else rt.weight
