"""FedMS (Wu et al. 2023, arXiv 2312.15926): Sparsely Activated LoRA + Mixture of FMs.

Stage 1 (rounds t < stage1_rounds): the *global expert* (frozen FM + SAL LoRA + head) is trained
by FedAvg. In round t a client trains and sends only the LoRA of its k_c(t) active blocks (+ the
head), see `models/sal.py`:   θ_G ← Σ_c n_c θ_c / Σ_c n_c   per tensor, over the senders.

Stage 2: each client keeps a *local expert* (initialised as a copy of the global expert the
first time it is sampled in stage 2) in its private memory — it is never sent. A gate mixes the
two experts per example (`models/mofm.py`):

    g = softmax(W_g · adapter(h) / tau),   p(y|x) = g_G · softmax(z_G) + g_L · softmax(z_L)

and only the gate adapter + gate head are FedAvg-ed. The global expert is frozen in stage 2
(option `global_in_stage2`: it keeps training on CE and being averaged).

Reconstruction choices (the paper's text is not public; each is an option, see docs/fedms.md):
gate input = the frozen backbone's pooled output (`gate_input = "frozen" | "global"`); SAL
applies to the local expert too in stage 2 (`sal_stage2`); not to the gate (it is tiny);
LoRA already trained but inactive this round is skipped (`inactive = "skip"`, the spec's
"not applied") or applied frozen (`"frozen"`). Evaluation applies every trained LoRA.

Efficiency: all experts and the gate read one frozen prefix per client (cached across rounds);
the frozen global expert's log-probabilities and the gate's input are cached per client.

task = "generate": the same server half; `fedms_lm.make_fedms` (the registry row) builds `FedMSLM`, whose client
half trains the experts' LoRA on the LM's response loss and mixes them per token,
p(v|x_≤t) = g_t,G · p_G(v|x_≤t) + g_t,L · p_L(v|x_≤t), decoded greedily (`models/mofm_lm.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fedfm.algorithms.aggregation import masked_aggregate
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.fedavg import prepare
from fedfm.algorithms.training import autocast, train_local
from fedfm.core.errors import ConfigError
from fedfm.core.resources import client_profiles
from fedfm.core.schema import RunConfig
from fedfm.core.seeds import derive_seed
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier, get_tensors
from fedfm.models.gate_net import GateNetwork
from fedfm.models.lora import block_of, lora_param_names, set_active_blocks
from fedfm.models.mofm import Gate, Tail, expert_forward, mixture_log_probs
from fedfm.models.sal import (
    GROWTHS,
    ORDERS,
    PrefixSource,
    SALSchedule,
    blocks_of,
    cached_source,
    lowest,
)
from fedfm.transport.messages import ClientTask, ClientUpdate

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FedMSOptions:
    stage1_rounds: int | None = None  # None = rounds // 2
    k0: int = 1  # SAL: active blocks in round 0 (0 = head only)
    step: int = 1  # SAL step growth: one more block every `step` rounds
    growth: str = "step"  # step | linear
    ramp_rounds: int | None = None  # linear growth: rounds to reach all blocks (None = stage 1)
    order: str = "top-down"  # top-down | bottom-up | random
    budget_k: bool = False  # per-client k_c = max(1, floor(budget · k)) from [resources]
    inactive: str = "skip"  # trained-but-inactive LoRA in training: skip | frozen
    sal_stage2: bool = True  # the local expert follows the SAL schedule (false: all blocks)
    cache: bool = True  # cache the frozen prefix per client
    cache_mb: float = 256.0  # per client and split; larger splits are not cached
    tau: float = 1.0  # gate temperature
    gate_rank: int = 16  # gate adapter bottleneck width
    gate_input: str = "frozen"  # frozen (pooled frozen FM) | global (global expert's features)
    gate_lr: float | None = None  # None = train.head_lr or train.lr
    global_in_stage2: bool = False  # keep training + averaging the global expert in stage 2
    local_ce_weight: float = 0.0  # + w · CE(z_local, y) next to the mixture's CE
    gate_type: str = "head"  # head (adapter + softmax head on pooled features) | network
    stage2_average: str = "gate"  # gate (adapter + head averaged) | adapter (head stays local)

    def check(self) -> None:
        rules = [
            (self.gate_lr is None or self.gate_lr > 0, "fedms.gate_lr must be > 0 (or unset)"),
            (self.order in ORDERS, f"fedms.order must be one of {', '.join(ORDERS)}"),
            (self.growth in GROWTHS, f"fedms.growth must be one of {', '.join(GROWTHS)}"),
            (self.inactive in ("skip", "frozen"), "fedms.inactive must be skip or frozen"),
            (self.gate_input in ("frozen", "global"), "fedms.gate_input must be frozen or global"),
            (self.gate_type in ("head", "network"), "fedms.gate_type must be head or network"),
            (self.stage2_average in ("gate", "adapter"),
             "fedms.stage2_average must be gate or adapter"),
            (self.k0 >= 0, "fedms.k0 must be >= 0"),
            (self.step >= 1, "fedms.step must be >= 1"),
            (self.ramp_rounds is None or self.ramp_rounds >= 1, "fedms.ramp_rounds must be >= 1"),
            (self.stage1_rounds is None or self.stage1_rounds >= 0,
             "fedms.stage1_rounds must be >= 0"),
            (self.tau > 0, "fedms.tau must be > 0"),
            (self.gate_rank >= 1, "fedms.gate_rank must be >= 1"),
            (self.cache_mb >= 0, "fedms.cache_mb must be >= 0"),
            (self.local_ce_weight >= 0, "fedms.local_ce_weight must be >= 0"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message + ".")


class FedMS:
    has_global_model = True

    def __init__(self, cfg: RunConfig, opts: FedMSOptions, num_clients: int):
        self.cfg, self.opts, self.name = cfg, opts, "fedms"
        s1 = cfg.rounds // 2 if opts.stage1_rounds is None else opts.stage1_rounds
        if s1 > cfg.rounds:
            raise ConfigError(f"fedms.stage1_rounds = {s1} exceeds rounds = {cfg.rounds}.")
        self.stage1_rounds = s1
        profiles = client_profiles(cfg.resources, num_clients, cfg.seed)
        self.budgets = [p.budget if opts.budget_k else 1.0 for p in profiles]
        self.global_: Tensors = {}
        self.gate_: Tensors = {}
        self.trained: set[int] = set()  # blocks whose global LoRA has been trained
        self.version = 0  # bumped whenever the global expert changes

    # ------------------------------------------------------------------ model (every process)

    def prepare_model(self, model: Classifier) -> None:
        """LoRA in every block (deterministic from the seed); a gate; the SAL schedule."""
        prepare(model, self.cfg)
        L = model.backbone.spec.num_layers
        if self.opts.k0 > L:
            raise ConfigError(f"fedms.k0 = {self.opts.k0} exceeds the model's {L} blocks.")
        ramp = self.opts.ramp_rounds or max(self.stage1_rounds, 1)
        self.schedule = SALSchedule(L, self.opts.k0, self.opts.step, self.opts.growth, ramp,
                                    self.opts.order, self.cfg.seed)
        params = dict(model.named_parameters())  # task = generate: no head (frozen LM head)
        self.head_names = [n for n in ("head.weight", "head.bias") if n in params]
        self.init = get_tensors(model, lora_param_names(model) + self.head_names)
        make = GateNetwork if self.opts.gate_type == "network" else Gate
        self.gate = make(model.backbone.spec.hidden, self.opts.gate_rank, self.opts.tau,
                         derive_seed(self.cfg.seed, 0x6A7E))
        self.tail = Tail(model.backbone, model.head, getattr(model, "pooling", "last"))
        self.num_layers = L

    def stage(self, rnd: int) -> int:
        return 1 if rnd < self.stage1_rounds else 2

    # ------------------------------------------------------------------ server half

    def init_server(self, model: Classifier) -> None:
        self.global_ = dict(self.init)
        self.gate_ = {k: v.detach().clone() for k, v in self._gate_tensors().items()}

    def _global_part(self, blocks: set[int]) -> Tensors:
        """The global expert's head + the LoRA of `blocks` (what a client needs of it)."""
        return {k: v for k, v in self.global_.items()
                if k.startswith("head.") or block_of(k) in blocks}

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        stage, tasks = self.stage(rnd), []
        for c in clients:
            active = self.schedule.active(rnd, self.budgets[c])
            if stage == 2 and not self.opts.sal_stage2:
                active = set(range(self.num_layers))
            send = self.trained | active
            tensors = {**self._global_part(send), **(self.gate_ if stage == 2 else {})}
            config = {"stage": stage, "active": sorted(active), "trained": sorted(self.trained),
                      "version": self.version}
            tasks.append(ClientTask(rnd, c, tensors, config))
        return tasks

    def expected_update(self, task: ClientTask) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Upload schema (validation): the active LoRA + head in stage 1, the gate in stage 2
        (plus the active global LoRA + head with `global_in_stage2`). Nothing else."""
        names: list[str] = []
        if task.config["stage"] == 1 or self.opts.global_in_stage2:
            active = set(task.config["active"])
            names = [f"backbone.{n}" for n in lora_param_names(self.tail.backbone, active)]
            names += self.head_names
        ref = {**self.init, **(self._gate_tensors() if task.config["stage"] == 2 else {})}
        if task.config["stage"] == 2:
            names += [k for k in ref if k.startswith("gate.") and self._shared_gate(k)]
        return {n: (tuple(ref[n].shape), ref[n].dtype) for n in names}

    def _gate_tensors(self) -> Tensors:
        return {f"gate.{k}": v for k, v in self.gate.state_dict().items()}

    def _shared_gate(self, key: str) -> bool:
        """Averaged in stage 2: the whole gate, or (stage2_average = adapter) its adapter only;
        the gate head then stays on the client (`gate_type = network` has no trained head)."""
        return self.opts.stage2_average == "gate" or not key.startswith("gate.head.")

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        stage = self.stage(rnd)
        metrics: dict[str, Any] = {
            "stage": stage, "active_blocks": self.schedule.k(rnd),
            "active_blocks_mean": _mean([u.metrics.get("active_blocks") for u in updates]),
            "gate_local_mean": _mean([u.metrics.get("gate_local") for u in updates]),
            "prefix_cached": _mean([u.metrics.get("prefix_cached") for u in updates]),
        }
        if not updates:
            return metrics
        # one masked mean over expert + gate: [aggregation] / [dp] see each client's whole upload
        agg, extra = masked_aggregate(
            self.cfg, rnd, [dict(u.tensors) for u in updates],
            [float(u.num_examples) for u in updates], {**self.global_, **self.gate_},
            client_ids=[u.client_id for u in updates])
        expert = {k: v for k, v in agg.items() if not k.startswith("gate.")}
        if expert:
            self.global_.update(expert)
            self.trained |= blocks_of(expert)
            self.version += 1
        self.gate_.update({k: v for k, v in agg.items() if k.startswith("gate.")})
        return {**metrics, **extra}

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        stage = self.stage(rnd)
        tensors = {**self._global_part(self.trained), **(self.gate_ if stage == 2 else {})}
        config = {"stage": stage, "trained": sorted(self.trained), "version": self.version}
        return [ClientTask(rnd, c, tensors, config, kind="evaluate") for c in clients]

    def evaluate_global(self, model: Classifier, split: Split) -> float | None:
        """The global expert (every trained LoRA block) on the pooled test set."""
        start = lowest(self.trained, self.num_layers)
        src = PrefixSource(model.backbone, split, start, self.cfg.train.precision)
        logp, _ = self._expert_view(src, self.global_, self.trained)
        return float((logp.argmax(-1) == split.labels).float().mean()) if len(split) else 0.0

    def global_tensors(self) -> Tensors:
        return {**self.global_, **self.gate_}

    def server_state(self) -> tuple[Tensors, dict[str, Any]]:
        return self.global_tensors(), {"trained": sorted(self.trained), "version": self.version}

    def load_server_state(self, tensors: Tensors, state: dict[str, Any]) -> None:
        self.global_ = {k: v for k, v in tensors.items() if not k.startswith("gate.")}
        self.gate_ = {k: v for k, v in tensors.items() if k.startswith("gate.")}
        self.trained, self.version = set(state["trained"]), int(state["version"])

    # ------------------------------------------------------------------ client half

    def _source(self, data: ClientData, which: str, start: int, memory: ClientMemory):
        split = data.train if which == "train" else data.test
        bert, prec = self.tail.backbone, self.cfg.train.precision
        if not self.opts.cache:
            return PrefixSource(bert, split, start, prec)
        return cached_source(bert, split, start, prec, memory.tensors, memory.state, which,
                             self.opts.cache_mb * 2**20)

    def _expert_view(self, src: PrefixSource, tensors: Tensors, applied: set[int]):
        """(log-probs (N, C), pooled features (N, H)) of one expert over a source, no grad."""
        logps, feats = [], []
        set_active_blocks(self.tail.backbone, applied)
        with torch.no_grad(), autocast(self.cfg.train.precision):
            for rows, mask, _ in src.batches(self.cfg.eval.batch_size):
                f, z = expert_forward(self.tail, tensors, src.hidden(rows, mask.shape[1]), mask,
                                      src.start)
                logps.append(F.log_softmax(z.float(), -1))
                feats.append(f.float())
        if not logps:
            return torch.zeros(0, self.tail.head.out_features), torch.zeros(0, 0)
        return torch.cat(logps), torch.cat(feats)

    def _train_expert(self, src: PrefixSource, tensors: Tensors, active: set[int],
                      applied: set[int], ctx: ClientContext) -> tuple[Tensors, float]:
        """Stage-1 step loop: CE of one expert; trains the head + the LoRA of `active` only."""
        names = lora_param_names(self.tail.backbone, active)
        names = [f"backbone.{n}" for n in names] + self.head_names
        leaves = {n: tensors[n].clone().requires_grad_(True) for n in names}
        weights = {**tensors, **leaves}
        set_active_blocks(self.tail.backbone, applied)
        stats = train_local(self._groups(leaves), src, self._expert_loss_fn(src, weights),
                            self.cfg.train, ctx.generator())
        return {n: t.detach().clone() for n, t in leaves.items()}, stats.loss

    def _expert_loss_fn(self, src: PrefixSource, weights: Tensors):
        """(rows, mask, y) -> CE of one expert (`weights`: its LoRA + head) from the prefix."""
        def loss_fn(rows, mask, y):
            _, z = expert_forward(self.tail, weights, src.hidden(rows, mask.shape[1]), mask,
                                  src.start)
            return F.cross_entropy(z.float(), y)
        return loss_fn

    def _groups(self, leaves: Tensors, gate: torch.nn.Module | None = None) -> list[dict]:
        t = self.cfg.train
        body = [p for n, p in leaves.items() if not n.startswith("head.")]
        heads = [p for n, p in leaves.items() if n.startswith("head.")]
        groups = [{"params": body, "lr": t.lr}, {"params": heads, "lr": t.head_lr or t.lr}]
        if gate is not None:
            groups.append({"params": list(gate.parameters()),
                           "lr": self.opts.gate_lr or t.head_lr or t.lr})
        return [g for g in groups if g["params"]]

    def _applied(self, active: set[int], trained: set[int]) -> set[int]:
        return active | trained if self.opts.inactive == "frozen" else set(active)

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        cfg = task.config
        active, trained = set(cfg["active"]), set(cfg["trained"])
        glob = {**self.init, **{k: v for k, v in task.tensors.items()
                                if not k.startswith("gate.")}}
        metrics: dict[str, Any] = {"active_blocks": len(active)}
        if cfg["stage"] == 1 or self.opts.global_in_stage2:
            applied = self._applied(active, trained)
            src = self._source(data, "train", lowest(applied, self.num_layers), memory)
            out, metrics["loss"] = self._train_expert(src, glob, active, applied, ctx)
            metrics["prefix_cached"] = float(src.cache is not None)
            glob.update(out)
            if cfg["stage"] == 1:
                return ClientUpdate(task.round, task.client_id, len(data.train), out, metrics)
            trained = trained | active
        else:
            out = {}
        gate_out, stats = self._train_mixture(task, glob, trained, active, data, memory, ctx)
        metrics.update(stats)
        return ClientUpdate(task.round, task.client_id, len(data.train), {**out, **gate_out},
                            metrics)

    # stage 2 ---------------------------------------------------------------------------

    def _local(self, memory: ClientMemory, glob: Tensors, trained: set[int]):
        """The client's local expert (a copy of the global one on first use) and its blocks."""
        if not self._has_local(memory):
            for k, v in glob.items():
                memory.tensors[f"local.{k}"] = v.detach().clone()
            memory.state["local_blocks"] = sorted(trained)
        local = {k[6:]: v for k, v in memory.tensors.items() if k.startswith("local.")}
        return local, set(memory.state["local_blocks"])

    @staticmethod
    def _has_local(memory: ClientMemory) -> bool:
        return "local_blocks" in memory.state

    def _views(self, which: str, src: PrefixSource, glob: Tensors, g_blocks: set[int],
               memory: ClientMemory, version: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (global expert log-probs, gate input) for a split; rebuilt if stale."""
        key, tag = f"view.{which}", [version, sorted(g_blocks), self.opts.gate_input]
        if memory.state.get(key) != tag or f"{key}.logp" not in memory.tensors:
            logp, feat = self._expert_view(src, glob, g_blocks)
            if self.opts.gate_input == "frozen":
                feat = self._frozen_features(src, memory, which)
            memory.tensors[f"{key}.logp"], memory.tensors[f"{key}.feat"] = logp, feat
            memory.state[key] = tag
        return memory.tensors[f"{key}.logp"], memory.tensors[f"{key}.feat"]

    def _frozen_features(self, src: PrefixSource, memory: ClientMemory, which: str):
        """Pooled output of the frozen backbone (no LoRA): computed once per client."""
        key = f"frozen_feat.{which}"
        if key not in memory.tensors:
            memory.tensors[key] = self._expert_view(src, self.init, set())[1]
        return memory.tensors[key]

    def _gate(self, tensors: Tensors, memory: ClientMemory | None = None) -> Gate:
        """The gate from the task's tensors (+ the client's own gate head, if it keeps one)."""
        private = {k: v for k, v in (memory.tensors if memory else {}).items()
                   if k.startswith("gate.")}
        mixed = {**{k: v for k, v in tensors.items() if k.startswith("gate.")}, **private}
        self.gate.load_state_dict({k[5:]: v for k, v in mixed.items()})
        return self.gate

    def _train_mixture(self, task: ClientTask, glob: Tensors, g_blocks: set[int],
                       active: set[int], data: ClientData, memory: ClientMemory,
                       ctx: ClientContext) -> tuple[Tensors, dict[str, Any]]:
        """Train the local expert (its active LoRA + head) and the gate on the mixture's CE."""
        local, l_blocks = self._local(memory, glob, g_blocks)
        applied = self._applied(active, l_blocks)
        start = min(lowest(applied, self.num_layers), lowest(g_blocks, self.num_layers))
        src = self._source(data, "train", start, memory)
        version = task.round if self.opts.global_in_stage2 else task.config["version"]
        logp_g, feat = self._views("train", src, glob, g_blocks, memory, version)
        names = [f"backbone.{n}" for n in lora_param_names(self.tail.backbone, active)]
        leaves = {n: local[n].clone().requires_grad_(True) for n in names + self.head_names}
        weights, gate, g_sum = {**local, **leaves}, self._gate(task.tensors, memory), []
        set_active_blocks(self.tail.backbone, applied)
        loss_fn = self._mixture_loss_fn(src, weights, gate, logp_g, feat, g_sum)
        stats = train_local(self._groups(leaves, gate), src, loss_fn, self.cfg.train,
                            ctx.generator())
        for n, t in leaves.items():
            memory.tensors[f"local.{n}"] = t.detach().clone()
        memory.state["local_blocks"] = sorted(l_blocks | active)
        gate_all = {k: v.detach().clone() for k, v in self._gate_tensors().items()}
        gate_out = {k: v for k, v in gate_all.items() if self._shared_gate(k)}
        memory.tensors.update({k: v for k, v in gate_all.items() if k not in gate_out})
        return gate_out, {"loss": stats.loss, "prefix_cached": float(src.cache is not None),
                          "gate_local": float(torch.cat(g_sum).mean()) if g_sum else None}

    def _mixture_loss_fn(self, src: PrefixSource, weights: Tensors, gate, logp_g: torch.Tensor,
                         feat: torch.Tensor, g_sum: list):
        """(rows, mask, y) -> CE of the mixture (global log-probs cached, local expert live)."""
        def loss_fn(rows, mask, y):
            _, z = expert_forward(self.tail, weights, src.hidden(rows, mask.shape[1]), mask,
                                  src.start)
            g = gate(feat[rows])
            g_sum.append(g.weights[:, 1].detach())
            loss = F.nll_loss(mixture_log_probs(g.log_weights, [logp_g[rows], z]), y)
            if self.opts.local_ce_weight:
                loss = loss + self.opts.local_ce_weight * F.cross_entropy(z.float(), y)
            return loss
        return loss_fn

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        """Personalised accuracy on the client's own test split (+ per-expert accuracies)."""
        g_blocks = set(task.config["trained"])
        glob = {**self.init, **{k: v for k, v in task.tensors.items()
                                if not k.startswith("gate.")}}
        y, n = data.test.labels, len(data.test)
        if task.config["stage"] == 1:
            src = self._source(data, "test", lowest(g_blocks, self.num_layers), memory)
            logp, _ = self._expert_view(src, glob, g_blocks)
            correct = int((logp.argmax(-1) == y).sum())
            return ClientUpdate(task.round, task.client_id, n, {}, {"correct": correct, "total": n})
        has_local = self._has_local(memory)
        local, l_blocks = (self._local(memory, glob, g_blocks) if has_local
                           else (glob, g_blocks))
        start = min(lowest(l_blocks, self.num_layers), lowest(g_blocks, self.num_layers))
        src = self._source(data, "test", start, memory)
        logp_g, feat = self._views("test", src, glob, g_blocks, memory, task.config["version"])
        logp_l, _ = self._expert_view(src, local, l_blocks)
        with torch.no_grad():
            g = self._gate(task.tensors, memory)(feat)
            mix = mixture_log_probs(g.log_weights, [logp_g, logp_l])
        acc = lambda lp: int((lp.argmax(-1) == y).sum())  # noqa: E731
        return ClientUpdate(task.round, task.client_id, n, {}, {
            "correct": acc(mix), "total": n, "acc_global_expert": acc(logp_g) / max(n, 1),
            "acc_local_expert": acc(logp_l) / max(n, 1),
            "gate_local": float(g.weights[:, 1].mean()) if n else None})


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
