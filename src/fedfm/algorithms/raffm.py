"""RaFFM (Yu, Muñoz, Jannesari 2023): resource-aware subnetworks of one foundation model.

Server, round t:
    θ ← SPP(θ)                        function-preserving reorder, most salient first
    for client k with budget b_k:     w_k = largest widths with cost(w_k) <= b_k · cost(full)
        send θ[w_k]                   the prefix slices = a real smaller model (+ head)
    θ[e] ← Σ_{k ∋ e} n_k θ_k[e] / Σ_{k ∋ e} n_k    coverage-normalised, per entry e;
                                       entries nobody held keep their value
Client k:  rebuild the subnetwork from the payload (frozen embeddings from its own copy of
           the public pre-trained checkpoint), train it (full / LoRA / head, `model.finetune`),
           send back its trained tensors (full: the kept weights; lora: A, B and the head).

The embeddings never travel: they are frozen, identical to the public checkpoint every
client loads once (counted once per client as `embedding_bytes_once`, not per round).
`heterofl` (heterofl.py) is this class with SPP off: static prefixes per tier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from fedfm.algorithms import registry
from fedfm.algorithms.aggregation import masked_aggregate
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING, Capabilities
from fedfm.algorithms.training import (
    count_correct,
    cross_entropy_loss,
    param_groups,
    train_local,
)
from fedfm.core.errors import ConfigError, PayloadError
from fedfm.core.resources import client_profiles
from fedfm.core.schema import RunConfig
from fedfm.core.seeds import derive_seed
from fedfm.data.federated import ClientData, Split
from fedfm.models import hf_elastic, hf_raffm
from fedfm.models.classifier import Classifier, set_tensors
from fedfm.models.elastic import Widths
from fedfm.models.lora import block_of, inject_lora, target_suffixes
from fedfm.models.sizing import choose_widths
from fedfm.transport.messages import ClientTask, ClientUpdate, payload_bytes

SIZING = ("largest", "sample")
AGGREGATION = ("coverage", "all_clients")


@dataclass(frozen=True)
class RaFFMOptions:
    """[raffm]: spp = reorder every round; sizing = largest | sample (rejection sampling);
    aggregation = coverage | all_clients (the authors' divide-by-all, compatibility only)."""

    spp: bool = True
    sizing: str = "largest"
    aggregation: str = "coverage"

    def check(self) -> None:
        if self.sizing not in SIZING:
            raise ConfigError(f"raffm.sizing must be one of {', '.join(SIZING)}, "
                              f"not '{self.sizing}'.")
        if self.aggregation not in AGGREGATION:
            raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATION)}, "
                              f"not '{self.aggregation}'.")


def task_widths(task: ClientTask, num_layers: int) -> Widths:
    """The widths a task asks for, checked against the super-network's depth."""
    try:
        w = Widths(tuple(int(h) for h in task.config["heads"]),
                   tuple(int(f) for f in task.config["ffn"]))
    except (KeyError, TypeError, ValueError):
        raise PayloadError("task config lacks integer lists 'heads' and 'ffn'") from None
    if len(w.heads) != num_layers or len(w.ffn) != num_layers:
        raise PayloadError(f"task widths name {len(w.heads)}/{len(w.ffn)} blocks, model has "
                           f"{num_layers}")
    return w


class RaFFM:
    """Both halves of RaFFM (and, with spp=False, of HeteroFL)."""

    has_global_model = True

    def __init__(self, cfg: RunConfig, opts: RaFFMOptions, num_clients: int, name: str = "raffm"):
        opts.check()
        self.cfg, self.opts, self.name = cfg, opts, name
        self.profiles = client_profiles(cfg.resources, num_clients, cfg.seed)
        self.global_: dict[str, torch.Tensor] = {}
        self.cost: hf_raffm.HFCost | None = None
        self.geo: hf_elastic.Geometry | None = None  # set by prepare_model
        self.frozen = 0  # parameters every client holds frozen (embeddings), never sent
        self._norm_names: set[str] = set()
        self._lora_suffixes: tuple[str, ...] = ()

    # ---- shared -------------------------------------------------------------------------
    def prepare_model(self, model: Classifier) -> None:
        """Any registered Hugging Face family (MiniLM included): geometry from its roles, costs
        from its tensors."""
        self.geo = hf_raffm.geometry_of(model)
        if self.cfg.model.finetune == "lora" and "qkv" in self.geo.roles:
            raise ConfigError(
                f"{self.name} with model.finetune = 'lora' does not yet cut LoRA on fused qkv "
                "projections (GPT-2's c_attn); use finetune = 'full' or 'head' on this family, "
                "or hetlora / flexlora / flora for heterogeneous-rank LoRA.")
        suffixes, all_linear = target_suffixes(model.backbone, self.cfg.model.lora_targets)
        self._lora_suffixes = tuple(self.geo.roles.values()) if all_linear else tuple(suffixes)
        self.frozen = hf_raffm.frozen_params(model, self.geo)
        self.cost = hf_raffm.HFCost(self.geo, hf_raffm.server_tensors(model, self.geo),
                                    self.frozen, model.backbone.spec.hidden,
                                    self.cfg.resources.unit, self.cfg.model.max_length,
                                    self.cfg.train.batch_size)

    def widths_for(self, client: int, rnd: int, rule: str | None = None) -> Widths:
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, rnd, client, 0x4AF))
        return choose_widths(self.cost, self.profiles[client].budget, rule or self.opts.sizing,
                             gen)

    def _task(self, rnd: int, client: int, kind: str, rule: str | None = None) -> ClientTask:
        w = self.widths_for(client, rnd, rule)
        p = self.profiles[client]
        config = {**w.to_json(), "tier": p.tier, "budget": p.budget, "unit": p.unit,
                  "cost_fraction": round(self.cost.fraction(w), 4)}
        return ClientTask(rnd, client, hf_elastic.extract(self.global_, self.geo, w), config, kind)

    # ---- server half --------------------------------------------------------------------
    def init_server(self, model: Classifier) -> None:
        self.global_ = hf_raffm.server_tensors(model, self.geo)

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        if self.opts.spp:
            self.global_ = hf_elastic.spp(self.global_, self.geo)
        return [self._task(rnd, c, "train") for c in clients]

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        if not updates:
            return {}
        subs = [self._as_weights(dict(u.tensors)) for u in updates]
        agg, extra = masked_aggregate(self.cfg, rnd, subs, [u.num_examples for u in updates],
                                      self.global_, client_ids=[u.client_id for u in updates],
                                      denominator=self.opts.aggregation)
        self.global_ = {**self.global_, **agg}
        fracs = [u.metrics.get("params_fraction") for u in updates]
        return {"sub_params_fraction_mean": sum(f or 0 for f in fracs) / len(fracs), **extra}

    def _as_weights(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A LoRA update (A, B per linear) -> the kept weights W[prefix] + (α/r)·B·A."""
        scale = self.cfg.model.lora_alpha / self.cfg.model.lora_rank
        out = {k: v for k, v in tensors.items() if not k.endswith((".lora_A", ".lora_B"))}
        for k in [k for k in tensors if k.endswith(".lora_A")]:
            base = k.removesuffix(".lora_A")
            a, b = tensors[k], tensors.get(base + ".lora_B")
            w = self.global_.get(base + ".weight")
            if b is None or w is None or b.shape[1] != a.shape[0]:
                raise PayloadError(f"LoRA update '{base}' is incomplete or not in the model")
            if b.shape[0] > w.shape[0] or a.shape[1] > w.shape[1]:
                raise PayloadError(f"LoRA update '{base}' is larger than the super-network")
            out[base + ".weight"] = w[: b.shape[0], : a.shape[1]] + scale * (b @ a)
        return out

    def expected_update(self, task: ClientTask) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Upload schema for `task`: the kept weights (full), LoRA A/B per target (lora), or
        the head alone (head) — shapes follow the task's own sub-tensors."""
        t, m = task.tensors, self.cfg.model
        head = {k: (tuple(v.shape), v.dtype) for k, v in t.items() if k.startswith("head.")}
        if m.finetune == "full":
            return {k: (tuple(v.shape), v.dtype) for k, v in t.items()}
        if m.finetune == "head":
            return head
        out = dict(head)
        for k, w in t.items():
            base = k.removesuffix(".weight")
            if k.endswith(".weight") and block_of(base) is not None and w.dim() == 2 and any(
                    base.endswith("." + x) for x in self._lora_suffixes):
                out[base + ".lora_A"] = ((m.lora_rank, w.shape[1]), torch.float32)
                out[base + ".lora_B"] = ((w.shape[0], m.lora_rank), torch.float32)
        return out

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [self._task(rnd, c, "evaluate", rule="largest") for c in clients]

    def evaluate_global(self, model: Classifier, split: Split) -> float | None:
        set_tensors(model, hf_elastic.fuse(self.global_, self.geo))
        c, n = count_correct(model, split, self.cfg.eval.batch_size, self.cfg.train.precision)
        return c / max(n, 1)

    def global_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.global_)

    def server_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(self.global_), {}

    def load_server_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.global_ = dict(tensors)

    # ---- client half --------------------------------------------------------------------
    def _trainable(self, clf: Classifier, ctx: ClientContext) -> None:
        """Unfreeze what `model.finetune` trains on the subnetwork (embeddings stay frozen)."""
        m = self.cfg.model
        if m.finetune == "lora":
            inject_lora(clf.backbone, m.lora_targets, m.lora_rank, m.lora_alpha, ctx.seed)
        elif m.finetune == "full":
            for n, p in clf.named_parameters():  # the block/final-norm tensors it was sent
                p.requires_grad_(n.startswith(self.geo.blocks) or n in self._norm_names)
        for p in clf.head.parameters():
            p.requires_grad_(True)

    def _sent(self, clf: Classifier) -> dict[str, torch.Tensor]:
        return hf_raffm.trained_tensors(clf, self.geo)

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        widths = task_widths(task, model.backbone.spec.num_layers)
        clf = self._subnetwork(model, widths, task)
        self._trainable(clf, ctx)
        named = [(n, p) for n, p in clf.named_parameters() if p.requires_grad]
        t0 = time.perf_counter()
        stats = train_local(param_groups(named, self.cfg.train.lr, self.cfg.train.head_lr),
                            data.train, cross_entropy_loss(clf), self.cfg.train, ctx.generator())
        step_s = (time.perf_counter() - t0) / max(stats.steps, 1)
        out = self._sent(clf)
        sent, received = payload_bytes(out), payload_bytes(task.tensors)
        _tally(memory, sent, received, step_s)
        return ClientUpdate(task.round, task.client_id, len(data.train), out, {
            "loss": stats.loss, "steps": stats.steps, "bytes_sent": sent,  # no timings: the
            # update's bytes must not depend on the machine (step time stays in memory.state)
            "params_fraction": self._params_fraction(widths)})

    def _subnetwork(self, model: Classifier, widths: Widths, task: ClientTask) -> Classifier:
        self._norm_names = {k for k in task.tensors if not k.startswith(("head.", self.geo.blocks))}
        return hf_raffm.sub_classifier(model, self.geo, widths, dict(task.tensors))

    def _params_fraction(self, w: Widths) -> float:
        return self.cost.params(w) / self.cost.params(Widths.of(self.cost.spec))

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        widths = task_widths(task, model.backbone.spec.num_layers)
        clf = self._subnetwork(model, widths, task)
        correct, total = count_correct(clf, data.test, self.cfg.eval.batch_size,
                                       self.cfg.train.precision)
        s = memory.state
        metrics = {"correct": correct, "total": total, "tier": task.config.get("tier"),
                   "budget": task.config.get("budget"), "unit": task.config.get("unit"),
                   "cost_fraction": task.config.get("cost_fraction"),
                   "sub_params": self.cost.params(widths),
                   "params_fraction": round(self._params_fraction(widths), 4),
                   "heads": list(widths.heads), "ffn": list(widths.ffn),
                   "bytes_sent": s.get("bytes_sent", 0), "bytes_received": s.get("bytes_received", 0),
                   "embedding_bytes_once": 4 * self.frozen,
                   "train_rounds": s.get("rounds", 0), "step_s_mean": s.get("step_s_mean")}
        return ClientUpdate(task.round, task.client_id, total, {}, metrics)


def _tally(memory: ClientMemory, sent: int, received: int, step_s: float) -> None:
    """The client's own running totals (private memory): bytes and mean step time."""
    s = memory.state
    n = s.get("rounds", 0)
    s["step_s_mean"] = (s.get("step_s_mean") or 0.0) * n / (n + 1) + step_s / (n + 1)
    s["rounds"] = n + 1
    s["bytes_sent"] = s.get("bytes_sent", 0) + sent
    s["bytes_received"] = s.get("bytes_received", 0) + received


def elastic_capabilities(name: str, aggregation: str) -> Capabilities:
    """coverage: every [aggregation] rule per coverage region + DP; all_clients: mean + DP."""
    if aggregation == "coverage":
        return AVERAGING
    return replace(AVERAGING, aggregation=("mean",),
                   why=f"{name}.aggregation = all_clients divides each entry by the weight of all "
                       f"clients, which only a mean can; set {name}.aggregation = \"coverage\"")


registry.register(
    "raffm", lambda cfg, opts, nl, nc: RaFFM(cfg, opts, nc), RaFFMOptions,
    "RaFFM: SPP-ordered, budget-fitted real subnetworks per client, coverage-normalised merge",
    capabilities=lambda opts: elastic_capabilities("raffm", opts.aggregation),
)
