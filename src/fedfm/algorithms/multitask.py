"""Multi-task federations ([[data.tasks]]): every client holds one task; each classification
task has its own head; the body (LoRA or the full body) is shared as the algorithm shares it.

`MultiTask(inner, client_tasks)` wraps an algorithm without changing it:
  - down: client k receives the inner algorithm's tensors minus the heads of other tasks,
    so it trains (and uploads) the body and its own task's head only;
  - up: the inner aggregation averages each tensor over the clients that sent it
    (θ_key = Σ_{k ∋ key} n_k θ_k,key / Σ_{k ∋ key} n_k): a task's head is the mean over that
    task's clients, the body the mean over all; a head no sampled client trained stays as it was;
  - client halves switch the model's active head to the client's task;
  - evaluation: accuracy per task on that task's global test set and on its clients' own test
    splits (`acc_by_task`); acc_global / acc_personal_mean are the macro means over tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedfm.algorithms.tasks import GEN_SCORES
from fedfm.core.errors import ConfigError
from fedfm.models.multihead import MultiHead, head_prefix
from fedfm.transport.messages import ClientTask

SUPPORTED = ("fedavg", "fedprox", "fedper", "local", "fedmoe", "randommoe")


def check_multitask(cfg) -> None:
    """Exit-2 refusals for what a multi-task federation cannot honour (yet)."""
    tasks = cfg.data.tasks
    names = [t.id or t.name for t in tasks]
    total = sum(t.num_clients for t in tasks)
    rules = [
        (cfg.algorithm in SUPPORTED,
         f"algorithm '{cfg.algorithm}' cannot run a multi-task federation ([[data.tasks]]): it "
         "has one classification head / one label space. Algorithms that can: "
         f"{', '.join(SUPPORTED)}"),
        (all(t.name for t in tasks), "every [[data.tasks]] table needs name = a data set "
         "(fedfm list)"),
        (len(set(names)) == len(names), f"[[data.tasks]] must differ in name (or id), got {names}"),
        (all("." not in n for n in names), "[[data.tasks]] names / ids must not contain '.'"),
        (all((t.task or cfg.task) == cfg.task for t in tasks),
         f"every [[data.tasks]] table must have the run's task (task = \"{cfg.task}\"): a "
         "federation of classification AND generation clients would need one model with both "
         "heads, which fedfm does not build; pose classification as generation instead "
         "(a classification data set in a task = \"generate\" run answers with the label name)"),
        (all(t.num_clients >= 1 for t in tasks), "[[data.tasks]] num_clients must be >= 1"),
        (cfg.data.num_clients == total,
         f"data.num_clients must equal the sum of the tasks' num_clients: set "
         f"data.num_clients = {total} (got {cfg.data.num_clients})"),
        (cfg.runtime == "embedded",
         "multi-task federations run on the embedded runtime only (runtime = \"embedded\")"),
        (cfg.aggregation.method == "mean" and not cfg.dp.enabled,
         "multi-task federations average each task's head over that task's clients; robust "
         "aggregation rules and DP-FedAvg compare whole updates and are not supported with "
         "[[data.tasks]] (use aggregation.method = \"mean\", dp.enabled = false)"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message + ".")


class MultiTask:
    """Wraps a single-task algorithm; see the module docstring."""

    def __init__(self, inner, client_tasks: Sequence[str]):
        self.inner, self.client_tasks = inner, list(client_tasks)
        self.name, self.has_global_model = inner.name, inner.has_global_model
        self.task_names = list(dict.fromkeys(self.client_tasks))
        if hasattr(inner, "set_client_tasks"):  # e.g. FedMoE's same-task estimate of p
            inner.set_client_tasks(self.client_tasks)

    def __getattr__(self, name: str) -> Any:  # server_state, global_tensors, ...
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def _own(self, task: ClientTask) -> ClientTask:
        mine = self.client_tasks[task.client_id]
        others = tuple(head_prefix(t) for t in self.task_names if t != mine)
        tensors = {k: v for k, v in task.tensors.items() if not k.startswith(others)}
        return ClientTask(task.round, task.client_id, tensors, task.config, task.kind)

    def prepare_model(self, model) -> None:
        self.inner.prepare_model(model)

    def init_server(self, model) -> None:
        self.inner.init_server(model)

    def configure_train(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [self._own(t) for t in self.inner.configure_train(rnd, clients)]

    def configure_evaluate(self, rnd: int, clients: list[int]) -> list[ClientTask]:
        return [self._own(t) for t in self.inner.configure_evaluate(rnd, clients)]

    def client_update(self, task, model, data, memory, ctx):
        activate(model, data.task)
        return self.inner.client_update(task, model, data, memory, ctx)

    def client_evaluate(self, task, model, data, memory, ctx):
        activate(model, data.task)
        return self.inner.client_evaluate(task, model, data, memory, ctx)

    def aggregate_train(self, rnd: int, updates) -> dict[str, Any]:
        return self.inner.aggregate_train(rnd, updates)

    def evaluate_global(self, model, split) -> float | None:
        return self.inner.evaluate_global(model, split)

    def evaluate_tasks(self, model, task_tests: dict) -> dict[str, Any]:
        """Each task's global result on that task's global test set: an accuracy, or
        {"acc_global", "loss_global"} for task = generate (None: no global model)."""
        out = {}
        for t, split in task_tests.items():
            activate(model, t)
            out[t] = self.inner.evaluate_global(model, split)
        return out


def activate(model, task: str) -> None:
    """Point a multi-head classifier at `task`'s head (generation models have no head)."""
    if isinstance(getattr(model, "head", None), MultiHead):
        model.head.active = task


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def task_metrics(by_task_global: dict[str, Any], client_metrics: dict[int, dict[str, Any]],
                 client_tasks: Sequence[str]) -> dict[str, Any]:
    """acc_by_task = {task: {"global": acc | None, "personal": mean over its clients}} (and
    loss_by_task for generation: mean response-token loss), plus the macro means over tasks as
    acc_global / acc_personal_mean (loss_global / loss_personal_mean); generation also gets
    f1_by_task and rougeL_by_task (token F1, ROUGE-L F; fedfm.models.text_metrics)."""
    acc: dict[str, dict[str, float | None]] = {}
    loss: dict[str, dict[str, float | None]] = {}
    for t, g in by_task_global.items():
        mine = [m for cid, m in client_metrics.items() if client_tasks[cid] == t]
        g_acc, g_loss = (g.get("acc_global"), g.get("loss_global")) if isinstance(g, dict) \
            else (g, None)
        acc[t] = {"global": g_acc, "personal": _mean(m.get("acc_personal") for m in mine)}
        loss[t] = {"global": g_loss, "personal": _mean(m.get("loss") for m in mine)}
    row: dict[str, Any] = {
        "acc_by_task": acc, "acc_global": _mean(v["global"] for v in acc.values()),
        "acc_personal_mean": _mean(v["personal"] for v in acc.values())}
    if any(v["global"] is not None or v["personal"] is not None for v in loss.values()):
        row.update(loss_by_task=loss, loss_global=_mean(v["global"] for v in loss.values()),
                   loss_personal_mean=_mean(v["personal"] for v in loss.values()))
    for key in GEN_SCORES:  # generation: token F1 and ROUGE-L per task (f1_by_task, ...)
        by = {t: {"global": g.get(f"{key}_global") if isinstance(g, dict) else None,
                  "personal": _mean(m.get(key) for cid, m in client_metrics.items()
                                    if client_tasks[cid] == t)}
              for t, g in by_task_global.items()}
        if any(v["global"] is not None or v["personal"] is not None for v in by.values()):
            row[f"{key}_by_task"] = by
    return row
