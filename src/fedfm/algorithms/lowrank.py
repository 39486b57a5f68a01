"""Shared plumbing of the heterogeneous-rank LoRA methods (hetlora, flexlora, flora).

Every client k trains a LoRA of its own rank on the same frozen backbone:

    r_k = clamp(round(R · b_k), 1, R)      R = model.lora_rank (the largest rank),
                                           b_k = the client's [resources] budget fraction
    y = W x + s · B_k (A_k x),   s = α / R  for EVERY client (rank-independent scaling, so the
                                           products B_k A_k of different ranks are comparable)

Whatever the `[resources] unit`, the rank is the budget fraction of R: a LoRA's trainable
parameters, its optimiser memory and its extra FLOPs are all linear in r (the frozen backbone's
cost is the same for every client, which is why RaFFM, not these methods, shrinks it).

What travels: the classification head (averaged by examples, as FedAvg) and per LoRA layer
p the factors `p.lora_A` (r_k, in) and `p.lora_B` (out, r_k) (up); down, whatever the method
sends (see each module). The three methods differ only in how the server turns the clients'
factors into the next round's factors; this module holds what they share: the rank rule, the
capability declaration (HETRANK: mean only, no DP, LoRA only), loading a client's tensors into the shared model (LoRA resized to r_k, base
weights set explicitly) and evaluation of the global model W0 + ΔW.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from fedfm.algorithms.aggregation import masked_mean
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import Capabilities
from fedfm.algorithms.fedavg import prepare
from fedfm.algorithms.training import (
    count_correct,
    cross_entropy_loss,
    param_groups,
    train_local,
)
from fedfm.core.errors import PayloadError
from fedfm.core.resources import client_profiles
from fedfm.core.schema import RunConfig
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier
from fedfm.models.lora import lora_modules
from fedfm.transport.messages import ClientTask, ClientUpdate, payload_bytes

Tensors = dict[str, torch.Tensor]
HEAD = ("head.weight", "head.bias")


HETRANK = Capabilities(
    aggregation=("mean",), dp=False, finetune=("lora",),
    why="it trains per-client-rank LoRA factors and combines them with its own rule (padding, "
        "SVD or stacking); robust rules and DP-FedAvg's clipping are defined on equally-shaped "
        "updates. For full-model training of budget-sized subnetworks use raffm or heterofl")


def rank_for(budget: float, max_rank: int) -> int:
    """r = clamp(round(R · b), 1, R)."""
    return max(1, min(max_rank, int(round(max_rank * budget))))


def set_lora(module: nn.Module, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    """Give a LoRA layer new factors A (r, in), B (out, r) of any rank r (new Parameters)."""
    module.lora_A = nn.Parameter(a.detach().clone().float())
    module.lora_B = nn.Parameter(b.detach().clone().float())
    module.rank, module.scale = a.shape[0], scale
    module.set_active(True)


class HetRankLoRA:
    """Server/client plumbing shared by the three methods; each subclass supplies
    `downlink(client, rank, rnd)`, `combine(updates)` and `global_delta(layer)`."""

    has_global_model = True

    def __init__(self, cfg: RunConfig, num_clients: int, name: str):
        self.cfg, self.name = cfg, name
        self.max_rank = cfg.model.lora_rank
        self.scale = cfg.model.lora_alpha / cfg.model.lora_rank
        self.profiles = client_profiles(cfg.resources, num_clients, cfg.seed)
        self.global_: Tensors = {}
        self.w0: Tensors = {}  # layer -> frozen pre-trained weight as the module stores it
        self.shape: dict[str, tuple[int, int]] = {}  # layer -> (out, in) of its LoRA product
        self.transposed: dict[str, bool] = {}
        self.init_a: Tensors = {}  # layer -> the seeded initial A (R, in)

    # ---- shared -------------------------------------------------------------------------
    def prepare_model(self, model: Classifier) -> None:
        prepare(model, self.cfg)
        for name, m in lora_modules(model).items():
            self.w0[name] = m.weight.detach().clone()
            self.init_a[name] = m.lora_A.detach().clone()
            self.shape[name] = (m.lora_B.shape[0], m.lora_A.shape[1])
            self.transposed[name] = type(m).__name__ == "LoRAConv1D"  # HF Conv1D: W is (in, out)

    def with_delta(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """W0 + ΔW in the module's own layout (HF Conv1D stores W as (in, out): ΔWᵀ)."""
        return self.w0[name] + (delta.T if self.transposed[name] else delta)

    def layers(self) -> list[str]:
        return sorted(self.w0)

    def rank_of(self, client: int) -> int:
        return rank_for(self.profiles[client].budget, self.max_rank)

    def _task(self, rnd: int, client: int, kind: str) -> ClientTask:
        r = self.rank_of(client)
        p = self.profiles[client]
        tensors = {k: self.global_[k] for k in HEAD}
        tensors.update(self.downlink(client, r, rnd))
        config = {"rank": r, "tier": p.tier, "budget": p.budget, "max_rank": self.max_rank}
        return ClientTask(rnd, client, tensors, config, kind)

    def expected_update(self, task: ClientTask) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Upload schema: the head and, per LoRA layer, A (r, in) and B (out, r) at the
        task's rank."""
        r = int(task.config["rank"])
        out = {k: (tuple(task.tensors[k].shape), torch.float32) for k in HEAD}
        for name, (n_out, n_in) in self.shape.items():
            out[f"{name}.lora_A"] = ((r, n_in), torch.float32)
            out[f"{name}.lora_B"] = ((n_out, r), torch.float32)
        return out

    # ---- server half --------------------------------------------------------------------
    def init_server(self, model: Classifier) -> None:
        params = dict(model.named_parameters())
        self.global_ = {k: params[k].detach().clone() for k in HEAD}
        self.global_.update(self.initial_state())

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [self._task(rnd, c, "train") for c in clients]

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        if not updates:
            return {}
        heads = masked_mean([{k: u.tensors[k] for k in HEAD} for u in updates],
                              [u.num_examples for u in updates])
        metrics = self.combine(rnd, updates) or {}
        self.global_.update(heads)
        ranks = [int(u.tensors[f"{self.layers()[0]}.lora_A"].shape[0]) for u in updates]
        return {"rank_mean": sum(ranks) / len(ranks), **metrics}

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [self._task(rnd, c, "evaluate") for c in clients]

    def evaluate_global(self, model: Classifier, split: Split) -> float | None:
        """The global model W0 + ΔW (ΔW = the method's aggregate, folded into the base)."""
        self._load_head(model, self.global_)
        mods = lora_modules(model)
        with torch.no_grad():
            for name in self.layers():
                mods[name].weight.copy_(self.with_delta(name, self.global_delta(name)))
                mods[name].set_active(False)
        c, n = count_correct(model, split, self.cfg.eval.batch_size, self.cfg.train.precision)
        return c / max(n, 1)

    def global_tensors(self) -> Tensors:
        return dict(self.global_)

    def server_state(self) -> tuple[Tensors, dict[str, Any]]:
        return dict(self.global_), {}

    def load_server_state(self, tensors: Tensors, state: dict[str, Any]) -> None:
        self.global_ = dict(tensors)

    # ---- client half --------------------------------------------------------------------
    def _load_head(self, model: Classifier, tensors) -> None:
        with torch.no_grad():
            model.head.weight.copy_(tensors["head.weight"])
            model.head.bias.copy_(tensors["head.bias"])

    def load_client(self, task: ClientTask, model: Classifier, ctx: ClientContext) -> int:
        """Set every tensor the client's forward uses: head, base weights, LoRA at rank r."""
        r = task_rank(task, self.max_rank)
        self._load_head(model, task.tensors)
        mods = lora_modules(model)
        for name in self.layers():
            base, (a, b) = self.client_base(name, task), self.client_factors(name, r, task, ctx)
            with torch.no_grad():
                mods[name].weight.copy_(base)
            set_lora(mods[name], a, b, self.scale)
        return r

    def client_base(self, name: str, task: ClientTask) -> torch.Tensor:
        return self.w0[name]

    def client_factors(self, name: str, r: int, task: ClientTask, ctx: ClientContext):
        a, b = task.tensors.get(f"{name}.lora_A"), task.tensors.get(f"{name}.lora_B")
        if a is None or b is None or a.shape[0] != r or b.shape[1] != r:
            raise PayloadError(f"task lacks LoRA factors of rank {r} for '{name}'")
        return a, b

    def extra_loss(self, model: Classifier, r: int):
        return None

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        r = self.load_client(task, model, ctx)
        for p in model.head.parameters():
            p.requires_grad_(True)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        t0 = time.perf_counter()
        stats = train_local(param_groups(named, self.cfg.train.lr, self.cfg.train.head_lr),
                            data.train, cross_entropy_loss(model), self.cfg.train,
                            ctx.generator(), self.extra_loss(model, r))
        step_s = (time.perf_counter() - t0) / max(stats.steps, 1)
        params = dict(model.named_parameters())
        out = {k: params[k].detach().clone() for k in self.expected_update(task)}
        metrics = {"loss": stats.loss, "steps": stats.steps, "rank": r}
        metrics.update(self.after_training(out, r, memory) or {})
        tally(memory, payload_bytes(out), payload_bytes(task.tensors), step_s)
        return ClientUpdate(task.round, task.client_id, len(data.train), out, metrics)

    def after_training(self, out: Tensors, r: int, memory: ClientMemory) -> dict | None:
        return None

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        r = self.load_client(task, model, ctx)
        correct, total = count_correct(model, data.test, self.cfg.eval.batch_size,
                                       self.cfg.train.precision)
        s = memory.state
        metrics = {"correct": correct, "total": total, "rank": r,
                   "tier": task.config.get("tier"), "budget": task.config.get("budget"),
                   "lora_params": sum(math.prod(shape) for k, (shape, _) in
                                      self.expected_update(task).items() if "lora_" in k),
                   "bytes_sent": s.get("bytes_sent", 0), "bytes_received": s.get("bytes_received", 0),
                   "train_rounds": s.get("rounds", 0), "step_s_mean": s.get("step_s_mean")}
        return ClientUpdate(task.round, task.client_id, total, {}, metrics)

    # ---- per method ---------------------------------------------------------------------
    def initial_state(self) -> Tensors:
        raise NotImplementedError

    def downlink(self, client: int, rank: int, rnd: int) -> Tensors:
        raise NotImplementedError

    def combine(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any] | None:
        raise NotImplementedError

    def global_delta(self, name: str) -> torch.Tensor:
        raise NotImplementedError


def task_rank(task: ClientTask, max_rank: int) -> int:
    try:
        r = int(task.config["rank"])
    except (KeyError, TypeError, ValueError):
        raise PayloadError("task config lacks an integer 'rank'") from None
    if not 1 <= r <= max_rank:
        raise PayloadError(f"task rank {r} outside [1, {max_rank}]")
    return r


def tally(memory: ClientMemory, sent: int, received: int, step_s: float) -> None:
    """The client's own running totals (private memory): bytes and mean step time."""
    s = memory.state
    n = s.get("rounds", 0)
    s["step_s_mean"] = (s.get("step_s_mean") or 0.0) * n / (n + 1) + step_s / (n + 1)
    s["rounds"] = n + 1
    s["bytes_sent"] = s.get("bytes_sent", 0) + sent
    s["bytes_received"] = s.get("bytes_received", 0) + received
