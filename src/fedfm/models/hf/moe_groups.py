"""DeepSeek-style routers (deepseek_v2, deepseek_v3) restricted to a client's held experts.

fedfm replaces the router's forward (per instance) with `group_route`, which reproduces HF's
routing exactly when every expert is held and stays valid when experts are removed:

    v3:  s = sigmoid(W x);  c = s + b (e_score_correction_bias);  group score = Σ top-2 c in group
    v2:  s = softmax(W x) over the held experts;  c = s;  group score = max c in group
         (topk_method = "greedy": one group holding everything)
    groups G* = top-`topk_group` groups by score;  chosen = top-k of c over held experts in G*
    weights = s[chosen] (/ Σ if norm_topk_prob) · routed_scaling_factor

**Groups after a cut** (decision, issue #16): an expert keeps the group of its global id
(`fedfm_groups[e] = global_id // (E / n_group)`); a group's score is taken over its *held*
experts only (v3: the best two held, or the one held); a group with no held expert scores -inf
and is never chosen; the number of chosen groups is min(topk_group, non-empty groups); k =
min(top_k, |held|). A token whose chosen groups hold fewer than k experts gets the sentinel
index `num_experts` (weight 0) in the spare slots, which the experts loop skips — it is not
rerouted outside its groups, so group-limited routing keeps its meaning. With every expert held
this is HF's routing; a cut model equals the full model masked to the same experts.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

KINDS = ("deepseek_v2", "deepseek_v3")


def _group_scores(choice: torch.Tensor, groups: torch.Tensor, n_group: int, kind: str):
    """(N, n_group) group scores over the finite (held) entries of `choice` (N, E)."""
    cols = []
    for g in range(n_group):
        c = choice[:, groups == g]  # (N, E_g)
        if c.shape[1] == 0:
            cols.append(choice.new_full((choice.shape[0],), float("-inf")))
        elif kind == "deepseek_v3":  # the best two held (one if only one is held)
            top = c.topk(min(2, c.shape[1]), dim=-1).values  # (N, <=2)
            fin = torch.isfinite(top)
            score = top.masked_fill(~fin, 0.0).sum(-1)
            cols.append(score.masked_fill(~fin.any(-1), float("-inf")))
        else:
            cols.append(c.max(-1).values)
    return torch.stack(cols, dim=-1)  # (N, G)


def group_route(self, hidden_states: torch.Tensor):
    """Router forward: (logits masked to held, top-k weights, top-k indices)."""
    kind, st = self.fedfm_kind, self.fedfm_state
    h = hidden_states.reshape(-1, self.hidden_dim)
    logits = F.linear(h.float(), self.weight.float())  # (N, E)
    held = None if st.held is None else st.held.to(logits.device)
    if held is not None:
        logits = logits.masked_fill(~held, float("-inf"))
    if kind == "deepseek_v3":
        scores = logits.sigmoid()
        choice = scores + self.e_score_correction_bias
    else:
        scores = logits.softmax(dim=-1)
        choice = scores.clone()
    if held is not None:
        choice = choice.masked_fill(~held, float("-inf"))
    n_held = int(held.sum()) if held is not None else logits.shape[1]
    groups = self.fedfm_groups.to(logits.device)
    if kind == "deepseek_v3" or getattr(self, "topk_method", "") == "group_limited_greedy":
        n_group = int(groups.max()) + 1
        gs = _group_scores(choice, groups, n_group, kind)  # (N, G)
        k_g = min(self.topk_group or n_group, int(torch.isfinite(gs[0]).sum()) if len(gs) else 1)
        gmask = torch.zeros_like(gs, dtype=torch.bool)
        gmask.scatter_(1, gs.topk(max(k_g, 1), dim=-1).indices, True)
        choice = choice.masked_fill(~gmask[:, groups], float("-inf"))
    top, idx = choice.topk(min(self.top_k, n_held), dim=-1)  # (N, k)
    dead = torch.isinf(top)
    weights = scores.gather(1, idx).masked_fill(dead, 0.0)
    if getattr(self, "norm_topk_prob", False):
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    weights = weights * self.routed_scaling_factor
    idx = idx.masked_fill(dead, self.num_experts)  # sentinel: skipped by the experts loop
    return logits, weights, idx


def attach_groups(rt, kind: str) -> None:
    """Give a DeepSeek router its global group ids and fedfm's forward."""
    e = rt.num_experts
    n_group = (getattr(rt, "num_group", None) or 1) if (
        kind == "deepseek_v3" or getattr(rt, "topk_method", "") == "group_limited_greedy") else 1
    rt.fedfm_kind = kind
    rt.fedfm_groups = torch.arange(e) // max(e // n_group, 1)
    rt.forward = types.MethodType(group_route, rt)


def cut_router(rt, local: torch.Tensor) -> None:
    """Keep only the rows `local` of a DeepSeek router (weights, correction bias, group ids)."""
    rt.fedfm_groups = rt.fedfm_groups.index_select(0, local)
    bias = getattr(rt, "e_score_correction_bias", None)
    if bias is not None:
        rt.e_score_correction_bias = bias.index_select(0, local)
