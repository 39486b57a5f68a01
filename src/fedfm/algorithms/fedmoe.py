"""FedMoE (Mei et al. 2024, arXiv 2408.11304): personalised FL with heterogeneous sub-MoEs.

The dense backbone becomes an MoE (models/moe.py: MoEfication by default). Trainable: LoRA on
attention (model.lora_targets, shared), LoRA on every expert (one per expert), the router rows,
and one classification head per task. Each client k has a memory budget M_k (resources,
unit = "memory", a fraction of the full MoE's training memory, see submoe.py).

Stage 1 (rounds < profile_rounds): clients that can hold the full MoE train it and report
  p[i, j] = share of token->expert assignments of block i to expert j (their validation data).
  Then per client: p_k = its report, else the example-weighted mean p of same-task reporters;
  theta_k = the largest theta whose per-block cumulative-p selection fits alpha · M_k.
Stage 2: client k gets dense tensors + its experts (+ their router rows) + its task's head;
  local loss = CE + balance_coef · Σ_blocks aux (+ router_z_loss_coef · Σ_blocks z-loss where
  the family's config defines it: Switch Transformers);  modular aggregation: dense by FedAvg, each
  expert over its holders only, unheld experts unchanged; heads over same-task clients.
  Expert recommendation (expert_rec.py) for clients whose validation accuracy stalls.
randomMoE (randommoe.py) = the same machinery with random expert sets of the same memory budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from fedfm.algorithms import registry
from fedfm.algorithms.adapter import schema_of
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.env import Env
from fedfm.algorithms.expert_rec import RecState, check_upload_metrics, observe, propose
from fedfm.algorithms.moe_backend import backend_for
from fedfm.algorithms.moe_validate import split_val, validate, validate_generate
from fedfm.algorithms.submoe import (
    Plan,
    estimate_shares,
    read_flat,
    search_threshold,
    select_keys,
    submodel_memory,
    to_flat,
    write_flat,
)
from fedfm.algorithms.training import param_groups, train_local
from fedfm.core.errors import ConfigError, PayloadError
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier, get_tensors, is_head
from fedfm.models.moe import BUILDS
from fedfm.transport.messages import (
    ClientTask,
    ClientUpdate,
    EvalResult,
    fields_of,
    payload_bytes,
    read_payload,
)

MiB = 2**20


@dataclass(frozen=True)
class FedMoEOptions:
    num_experts: int = 8  # experts per MoE block
    top_k: int = 2  # experts per token
    build: str = "moefy"  # moefy (split FFN neurons) | upcycle (copy the FFN)
    expert_lora_rank: int = 8  # LoRA rank on each expert's two matrices
    balance_coef: float = 0.01  # weight of the load-balancing loss
    profile_rounds: int = 1  # stage 1 rounds (full-MoE clients profile p)
    alpha: float = 0.9  # stage 1 selection must fit alpha · memory budget
    references: int = 3  # K: size of the reference set for expert recommendation
    patience: int = 1  # non-improving validations before a recommendation
    recommend: bool = True
    val_fraction: float = 0.2  # of each client's train split, for validation and p
    min_experts: int = 1  # per block
    budget_of: str = "experts"  # the budget fraction b_k scales: experts | model (see docs)
    score: str = "loss"  # validation score for recommendation: loss (-CE) | accuracy
    checkpoint: str | None = None  # a fedfm MoE folder (models.moe.save_moe_folder) to start from
    profile_all_large: bool = False  # stage 1 trains every large client, sampled or not

    def check(self) -> None:
        rules = [
            (self.num_experts >= 1, "num_experts must be >= 1"),
            (1 <= self.top_k <= self.num_experts, "top_k must be in 1..num_experts"),
            (self.build in BUILDS, f"build must be one of {', '.join(BUILDS)}"),
            (self.expert_lora_rank >= 1, "expert_lora_rank must be >= 1"),
            (self.balance_coef >= 0, "balance_coef must be >= 0"),
            (self.profile_rounds >= 0, "profile_rounds must be >= 0"),
            (0 < self.alpha <= 1, "alpha must be in (0, 1]"),
            (self.references >= 1, "references must be >= 1"),
            (self.patience >= 1, "patience must be >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (1 <= self.min_experts <= self.num_experts, "min_experts must be in 1..num_experts"),
            (self.budget_of in ("experts", "model"), "budget_of must be experts or model"),
            (self.score in ("loss", "accuracy"), "score must be loss or accuracy"),
        ]
        for ok, msg in rules:
            if not ok:
                raise ConfigError(f"[fedmoe/randommoe] {msg}.")


IDLE = "idle"  # the phase of a stage-1 task for a client that cannot hold the full MoE


@dataclass(frozen=True)
class Phase:
    phase: str  # stage1 | stage2 | idle


@dataclass(frozen=True)
class MoETask:
    """What a task tells client k: its experts per MoE block, the threshold θ_k and where its
    p came from (stage 2 plans), and the measured memory of its sub-MoE."""

    phase: str
    held: list[list[int]]
    theta: float | None
    p_source: str | None
    memory: int


@dataclass(frozen=True)
class MoEReport:
    """What the server reads of a training reply: validation scores and the expert shares p
    (blocks x experts) for stage-1 profiles and recommendation."""

    loss: float
    val_acc: float | None
    val_loss: float
    task: Any
    p: list[list[float]]
    phase: str


@dataclass(frozen=True)
class Shares:
    """What aggregation reads of a training reply: the expert shares p (blocks x experts)."""

    p: list[list[float]]


@dataclass(frozen=True)
class Scores:
    """What expert recommendation reads: the validation score (loss, or accuracy)."""

    val_loss: float | None = None
    val_acc: float | None = None


@dataclass(frozen=True)
class ExpertsReport:
    """What a client's evaluation reports besides its EvalResult: its sub-MoE."""

    task: Any
    experts_per_layer: list[int]
    experts: int
    experts_held: list[list[int]]
    memory_mb: float
    theta: float | None
    p_source: str | None
    bytes_sent: int


def _head_key(task: str, key: str) -> str:
    return f"task[{task}].{key}"


class FedMoE:
    """Both halves of FedMoE; `planner` = "profile" (FedMoE) or "random" (randomMoE)."""

    has_global_model = False

    def __init__(self, opts: FedMoEOptions, env: Env, name: str = "fedmoe",
                 planner: str = "profile"):
        if env.finetune.mode != "lora":
            raise ConfigError(f"{name} trains LoRA adapters: set model.finetune = \"lora\".")
        res = env.resources
        if (res.tiers or res.per_client) and res.unit != "memory":
            raise ConfigError(f"{name} reads memory budgets: set resources.unit = \"memory\".")
        self.env, self.opts, self.name, self.planner = env, opts, name, planner
        self.budgets = [p.budget for p in env.profiles()]
        self.flat: dict[str, torch.Tensor] = {}
        self.init_head: dict[str, torch.Tensor] = {}
        self.task_of: dict[int, str] = {}
        self.reports: dict[int, tuple[torch.Tensor, int, str]] = {}
        self.latest_p: dict[int, torch.Tensor] = {}
        self.plans: dict[int, Plan] = {}
        self.measured: dict[int, int] = {}
        self.rec: dict[int, RecState] = {}
        self.p_source: dict[int, str] = {}

    def set_client_tasks(self, tasks: list[str]) -> None:
        """The server knows each client's task (multi-task federations): stage 1 estimates the
        p of a client that did not profile from reporters of ITS task (submoe.estimate_shares)."""
        self.task_of.update(enumerate(tasks))

    # ---------------------------------------------------------------- model
    def prepare_model(self, model: Classifier) -> None:
        self.backend = backend_for(model)  # legacy MiniLM MoE | Hugging Face MoE
        self.backend.prepare(self, model)
        self.mem = self.backend.memory(model)
        self.model = model
        flat = to_flat(get_tensors(model))
        self.init_head = {k: v for k, v in flat.items() if is_head(k)}
        held = self.backend.all_held(model)
        layer_ids = getattr(self.backend, "layer_ids", None)  # dense blocks between MoE ones
        self.layers = layer_ids(model) if layer_ids else None
        counts = {len(h) for h in held}
        if len(counts) != 1:
            raise ConfigError(f"{self.name} needs the same expert count in every block, got {counts}.")
        self.shape = (len(held), counts.pop())

    def init_server(self, model: Classifier) -> None:
        self.flat = {k: v for k, v in to_flat(get_tensors(model)).items()
                     if not k.startswith("head.")}

    def limit(self, cid: int, alpha: float) -> float:
        """alpha · M_k in bytes. budget_of = "model": M_k = b_k · memory(full MoE);
        "experts": M_k = memory(dense part) + b_k · memory(all experts), alpha on the experts."""
        b = self.budgets[cid]
        if self.opts.budget_of == "model":
            return alpha * b * self.mem.full
        return self.mem.dense + alpha * b * (self.mem.full - self.mem.dense)

    # ---------------------------------------------------------------- server: plans
    def stage(self, rnd: int) -> int:
        return 1 if self.planner == "profile" and rnd < self.opts.profile_rounds else 2

    def held_of(self, cid: int, rnd: int) -> list[list[int]] | None:
        """The client's experts this round (None: it sits stage 1 out)."""
        if self.stage(rnd) == 1:
            return self.backend.all_held(self.model) if self.budgets[cid] >= 1.0 else None
        if not self.plans:
            self._plan_all()
        return self.plans[cid].held

    def _plan_all(self) -> None:
        for cid in range(len(self.budgets)):
            if self.planner == "random":
                plan = self._random_plan(cid)
            else:
                p, self.p_source[cid] = self._p_of(cid)
                self.latest_p[cid] = p
                plan = search_threshold(p, self.mem, self.limit(cid, self.opts.alpha),
                                        self.opts.min_experts)
            self._set_plan(cid, plan)

    def _p_of(self, cid: int) -> tuple[torch.Tensor, str]:
        """Stage-1 p of a client and where it came from: "own" report, "task" (mean of its
        task's reporters), "all" (no reporter of its task: mean of all reporters) or "uniform"."""
        if cid in self.reports:
            return self.reports[cid][0], "own"
        task = self.task_of.get(cid, "main")
        tasks = {t for _, _, t in self.reports.values()}
        source = "task" if task in tasks else ("all" if tasks else "uniform")
        return estimate_shares(self.reports, task, self.shape), source

    def _set_plan(self, cid: int, plan: Plan) -> None:
        measured = submodel_memory(self.backend.build(self.model, plan.held))
        if measured != plan.memory:
            raise RuntimeError(f"memory model {plan.memory} != built submodel {measured} bytes")
        self.plans[cid], self.measured[cid] = plan, measured

    def _random_plan(self, cid: int) -> Plan:
        """Random experts, spread evenly over blocks, as many as fit alpha · M_k."""
        rng = np.random.default_rng([self.env.seed, cid, 0x4A3])
        blocks, e = self.shape
        orders = [rng.permutation(e).tolist() for _ in range(blocks)]
        limit = self.limit(cid, self.opts.alpha)
        for n in range(blocks * e, blocks * self.opts.min_experts - 1, -1):
            held = [sorted(o[: n // blocks + (i < n % blocks)]) for i, o in enumerate(orders)]
            if self.mem.cost(held) <= limit:
                return Plan(1.0, held, self.mem.cost(held), True)
        held = [sorted(o[: self.opts.min_experts]) for o in orders]
        return Plan(1.0, held, self.mem.cost(held), False)

    # ---------------------------------------------------------------- server: tasks
    def _payload(self, cid: int, held) -> dict[str, torch.Tensor]:
        task = self.task_of.get(cid, "main")
        out = {k: self.flat[k] for k in select_keys(self.flat, held, self.layers) if not k.startswith("task[")}
        for k, v in self.init_head.items():
            out[k] = self.flat.get(_head_key(task, k), v)
        return out

    def _task(self, rnd: int, cid: int, kind: str) -> ClientTask:
        held = self.held_of(cid, rnd)
        if held is None:
            if kind == "train":
                return ClientTask(rnd, cid, {}, fields_of(Phase(IDLE)))
            held = self.backend.all_held(self.model)  # stage 1 evaluation: the full MoE, for reference only
        plan = self.plans.get(cid)
        spec = MoETask(f"stage{self.stage(rnd)}", held, plan.theta if plan else None,
                       self.p_source.get(cid), self.measured.get(cid, self.mem.cost(held)))
        return ClientTask(rnd, cid, self._payload(cid, held), fields_of(spec), kind)

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        if self.stage(rnd) == 1 and self.opts.profile_all_large:  # every large client profiles
            clients = sorted(set(clients) | {c for c, b in enumerate(self.budgets) if b >= 1.0})
        return [self._task(rnd, c, "train") for c in clients]

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [self._task(rnd, c, "evaluate") for c in clients]

    def upload_schema(self, task: ClientTask) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What travels: exactly the tensors the task carried (dense part, the client's held
        experts with their router rows, its task's head), trained; nothing for an idle task."""
        return schema_of(task.tensors)

    # ---------------------------------------------------------------- client half
    def _load(self, task: ClientTask, model: Classifier) -> Classifier:
        """The model the client trains: the shared one masked (legacy) or a cut copy (HF)."""
        model = self.backend.client_model(model, task.read(MoETask).held)
        write_flat(model, dict(task.tensors))
        return model

    def client_update(self, task: ClientTask, model: Classifier, data: ClientData,
                      memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        n = len(data.train)
        if task.read(Phase).phase == IDLE:
            return ClientUpdate(task.round, task.client_id, n, {}, {"task": data.task})
        model = self._load(task, model)
        train, val = split_val(data.train, self.opts.val_fraction,
                               self.env.seed * 7919 + task.client_id)
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        extra = self.backend.extra_loss(model, self.opts.balance_coef)  # + Switch's z-loss
        t = self.env.train
        stats = train_local(param_groups(named, t.lr, t.head_lr), train,
                            self.env.task.loss_fn(model), t, ctx.generator(), extra)
        if self.env.task.kind == "generate":
            val_acc, val_loss, p = validate_generate(model, val, self.env.task, self.backend.loads,
                                                     self.opts.score == "accuracy")
        else:
            val_acc, val_loss, p = validate(model, val, self.env.eval_batch_size,
                                            self.env.precision, self.backend.loads)
        out = read_flat(model, list(task.tensors))
        memory.state["bytes_sent"] = memory.state.get("bytes_sent", 0) + payload_bytes(out)
        metrics = fields_of(MoEReport(stats.loss, val_acc, val_loss, data.task, p.tolist(),
                                      task.read(Phase).phase))
        return ClientUpdate(task.round, task.client_id, n, out, metrics)

    def client_evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                        memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        model = self._load(task, model)
        m = self.env.task.metrics(model, data.test)  # + loss, f1, rougeL for generate
        spec = task.read(MoETask)
        held = spec.held
        return ClientUpdate(task.round, task.client_id, read_payload(EvalResult, m).total, {}, {
            **m, **fields_of(ExpertsReport(
                data.task, [len(h) for h in held], sum(map(len, held)), held,
                round(spec.memory / MiB, 3), spec.theta, spec.p_source,
                memory.state.get("bytes_sent", 0)))})

    # ---------------------------------------------------------------- server: aggregation
    def check_metrics(self, task: ClientTask, update: ClientUpdate) -> str | None:
        """Upload metrics the server reads, checked before aggregation (expert_rec)."""
        if update.tensors:  # aggregate_train reads it typed
            try:
                update.read(Shares), update.read(Scores)
            except PayloadError as e:
                return str(e)
        return check_upload_metrics(update, self.shape, self.opts.score)

    def aggregate_train(self, rnd: int, updates: list[ClientUpdate]) -> dict[str, Any]:
        trained = []
        for u in updates:
            self.task_of[u.client_id] = str(u.metrics.get("task", "main"))
            if not u.tensors:
                continue
            task = self.task_of[u.client_id]
            tensors = {(_head_key(task, k) if is_head(k) else k): v
                       for k, v in u.tensors.items()}
            trained.append((tensors, float(u.num_examples), u.client_id))
            p = torch.tensor(u.read(Shares).p, dtype=torch.float64)
            if self.stage(rnd) == 1:
                self.reports[u.client_id] = (p, u.num_examples, task)
            self.latest_p[u.client_id] = p
        # per expert (its holders) and the dense part (everyone), with [aggregation] / [dp]
        agg, extra = self.env.averaging.masked(rnd, [t for t, _, _ in trained],
                                               [w for _, w, _ in trained], self.flat,
                                               client_ids=[c for _, _, c in trained])
        self.flat = {**self.flat, **agg}
        out: dict[str, Any] = {"stage": self.stage(rnd), "trained_clients": len(trained),
                               **extra}
        if self.stage(rnd) == 2 and self.planner == "profile" and self.opts.recommend:
            out.update(self._recommend(updates))
        return out

    def _recommend(self, updates: list[ClientUpdate]) -> dict[str, int]:
        counts = {"accept": 0, "revert": 0, "recommend": 0}
        for u in updates:
            if not u.tensors:
                continue
            cid, st = u.client_id, self.rec.setdefault(u.client_id, RecState())
            rep = u.read(Scores)
            score = -float(rep.val_loss) if self.opts.score == "loss" else float(rep.val_acc)
            action = observe(st, score, self.opts.patience)
            if action == "revert":
                self._set_plan(cid, self._plan_for(st.trial_prev))
                st.trial_prev = st.trial_score = None
            elif action == "recommend":
                action = self._try_change(cid, st, score)
            if action in counts:
                counts[action] += 1
                st.changes.append(action)
        return {f"rec_{k}": v for k, v in counts.items()}

    def _plan_for(self, held) -> Plan:
        return Plan(-1.0, held, self.mem.cost(held), True)

    def _try_change(self, cid: int, st: RecState, score: float) -> str:
        old = self.plans[cid].held
        held = {c: p.held for c, p in self.plans.items()}
        # stage 2 may use the headroom alpha left: the limit is the full budget M_k
        new = propose(cid, self.latest_p, held, self.opts.references, self.mem.cost,
                      self.limit(cid, 1.0))
        if new == old:
            return "none"
        st.trial_prev, st.trial_score = old, score
        self._set_plan(cid, self._plan_for(new))
        return "recommend"

    # ---------------------------------------------------------------- misc
    def evaluate_global(self, model: Classifier, split: Split) -> float | None:
        return None

    def summary_fields(self, clients: list[dict]) -> dict[str, Any]:
        """summary.json: experts_total (blocks x experts) and experts_held_mean over clients."""
        held = [c["experts"] for c in clients if "experts" in c]
        return {"experts_total": self.shape[0] * self.shape[1],
                "experts_held_mean": sum(held) / len(held) if held else None}

    def global_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.flat)

    def server_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Flat tensors + JSON: tasks, stage-1 reports, profiles, plans, recommendation state."""
        state = {
            "task_of": {str(k): v for k, v in self.task_of.items()},
            "reports": {str(c): [p.tolist(), n, t] for c, (p, n, t) in self.reports.items()},
            "latest_p": {str(c): p.tolist() for c, p in self.latest_p.items()},
            "plans": {str(c): {"theta": p.theta, "held": p.held, "fits": p.fits}
                      for c, p in self.plans.items()},
            "rec": {str(c): asdict(r) for c, r in self.rec.items()},
            "p_source": {str(c): s for c, s in self.p_source.items()},
        }
        return dict(self.flat), state

    def load_server_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.flat = dict(tensors)
        f64 = torch.float64
        self.task_of = {int(k): v for k, v in state.get("task_of", {}).items()}
        self.reports = {int(c): (torch.tensor(p, dtype=f64), n, t)
                        for c, (p, n, t) in state.get("reports", {}).items()}
        self.latest_p = {int(c): torch.tensor(p, dtype=f64)
                         for c, p in state.get("latest_p", {}).items()}
        for c, p in state.get("plans", {}).items():
            self._set_plan(int(c), Plan(p["theta"], p["held"], self.mem.cost(p["held"]), p["fits"]))
        self.rec = {int(c): RecState(**r) for c, r in state.get("rec", {}).items()}
        self.p_source = {int(c): s for c, s in state.get("p_source", {}).items()}


MOE_CAPABILITIES = replace(AVERAGING, finetune=("lora",),
                           why="its experts and dense part are LoRA adapters")

registry.register(
    "fedmoe", lambda opts, env: FedMoE(opts, env), FedMoEOptions,
    "FedMoE: MoE backbone, activation-profiled sub-MoE per client, modular aggregation",
    capabilities=MOE_CAPABILITIES, tasks=("classify", "generate"), multitask=True,
)
