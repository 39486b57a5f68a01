"""The embedded runner: a plain loop, one process, one frozen backbone.

Per round t:
  S_t = sample(clients)                       seeded by (seed, t)
  for k in S_t:  task_k -> bytes -> client_update(model, data_k, memory_k) -> bytes -> update_k
  aggregate_train(t, [update_k])              (after validation)
  every eval.every rounds: evaluate_global on the pooled test set, client_evaluate on every
  client's own test split (personalised accuracy).
Every message crosses a real encode/decode (safetensors + JSON), so bytes are exact and the
code path is the one a networked runtime uses. Clients' private memory lives in a ClientStore.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from fedfm.algorithms.base import ClientContext
from fedfm.algorithms.training import round_lr_factor
from fedfm.core.errors import PayloadError
from fedfm.core.seeds import sample_by_task, sample_clients
from fedfm.sim.availability import Inbox
from fedfm.sim.clients import (
    EVALUATE,
    TRAIN,
    Clients,
    LocalClients,
    client_context,
    roundtrip,  # noqa: F401  (re-exported: the transport edge)
)
from fedfm.sim.personal import KEYS as PERSONAL_KEYS
from fedfm.sim.personal import eligible_clients, personal_metrics
from fedfm.sim.probe import peak_rss_mb
from fedfm.sim.store import ClientStore
from fedfm.sim.world import World
from fedfm.transport.messages import EvalResult, TrainReport, fields_of

log = logging.getLogger("fedfm")

ProgressHook = Callable[[str, int, int], None]  # (phase, done, total)


class EmbeddedRunner:
    def __init__(self, world: World, store: ClientStore | None = None,
                 progress: ProgressHook | None = None, clients: Clients | None = None):
        self.world, self.cfg = world, world.cfg
        self.algo = world.algorithm
        self.store = store or ClientStore.from_config(self.cfg.sim)
        # where client halves run: here (default) or e.g. on Flower SuperNodes (fedfm.flower)
        self.clients = clients or LocalClients(world, self.store, self.cfg.comm.dtype)
        self.progress = progress or (lambda phase, done, total: None)
        self.client_metrics: dict[int, dict[str, Any]] = {}
        # server side of uploads: dropouts, stragglers, validation (fedfm.sim.availability)
        self.inbox = Inbox(self.cfg, self.algo, world.data.num_clients)
        # personalised evaluation skips clients with a test split < data.min_client_test
        self.personal_clients = eligible_clients([len(c.test) for c in world.data.clients],
                                                 self.cfg.data.min_client_test)

    def ctx(self, rnd: int, cid: int, phase: int) -> ClientContext:
        return client_context(self.cfg.seed, rnd, cid, phase)

    def train_round(self, rnd: int) -> dict[str, Any]:
        """One federated round; returns its metrics (bytes, times, algorithm extras)."""
        t0 = time.perf_counter()
        d = self.world.data
        s = self.cfg.sampling
        if s.enforce_tasks:  # every task each round (multi-task federations)
            clients = sample_by_task([c.task for c in d.clients], s.fraction, self.cfg.seed, rnd)
        else:
            clients = sample_clients(d.num_clients, s.fraction, s.min_clients, self.cfg.seed, rnd)
        tasks = self.algo.configure_train(rnd, clients)
        live = self.inbox.open(rnd, tasks)  # dropouts; last round's stragglers -> stale
        updates, up, down, compute = [], 0, 0, 0.0
        for i, ex in enumerate(self.clients.exchange(live, rnd, TRAIN)):
            compute += ex.compute_s
            down, up = down + ex.bytes_down, up + ex.bytes_up
            # raw bytes: the size cap is checked before anything is decoded (fedfm.transport.validation)
            update = self.inbox.receive(rnd, ex.task, ex.reply_blob, ex.bytes_up)
            if update is not None:
                updates.append(update)
            self.progress("train", i + 1, len(live))
        if self.inbox.complete(rnd, len(updates), len(tasks)):
            extras = self.algo.aggregate_train(rnd, updates)
        else:
            extras = {"skipped": True}
        return {"clients": len(tasks), "bytes_up": up, "bytes_down": down,
                "client_compute_s": compute, "round_wall_s": time.perf_counter() - t0,
                "train_loss": _mean([train_loss(u) for u in updates]),
                **self.inbox.metrics(), **extras}

    def evaluate(self, rnd: int) -> dict[str, Any]:
        """Global accuracy (pooled test) and personalised accuracy (each client, own test)."""
        t0 = time.perf_counter()
        d = self.world.data
        acc_global = None if d.task_tests else self.algo.evaluate_global(self.world.model,
                                                                        d.global_test)
        extra = {}
        if isinstance(acc_global, dict):  # task = generate: {"acc_global", "loss_global"}
            extra, acc_global = dict(acc_global), acc_global.get("acc_global")
            extra.pop("acc_global", None)
        tasks = self.algo.configure_evaluate(rnd, self.personal_clients)
        results, losses, eval_bytes, compute = [], [], 0, 0.0
        rejected = 0
        for i, ex in enumerate(self.clients.exchange(tasks, rnd, EVALUATE)):
            compute += ex.compute_s
            eval_bytes += ex.bytes_down + ex.bytes_up
            task, res = ex.task, eval_reply(ex, rnd)
            if res is None:  # a malformed evaluation reply is rejected, the round goes on
                rejected += 1
                continue
            r = res.read(EvalResult)  # checked by eval_reply
            results.append((r.correct, r.total))
            losses.append(r.loss)  # task = generate: response-token loss
            self.client_metrics[task.client_id] = {"acc_personal": r.correct / max(r.total, 1),
                                                   **extra_metrics(res)}
            self.progress("evaluate", i + 1, len(tasks))
        if any(v is not None for v in losses):
            extra["loss_personal_mean"] = _mean(losses)
            for key in ("f1", "rougeL"):  # task = generate: token F1, ROUGE-L per client
                extra[f"{key}_personal_mean"] = _mean([self.client_metrics.get(t.client_id, {}).get(key)
                                                       for t in tasks])
        row = {"acc_global": acc_global, **personal_metrics(results), **extra}
        if d.task_tests:  # multi-task: per-task accuracy, macro means over tasks
            from fedfm.algorithms.multitask import task_metrics

            by_task = self.algo.evaluate_tasks(self.world.model, d.task_tests)
            counted = {c: m for c, m in self.client_metrics.items() if c in self.personal_clients}
            row = {**row, **task_metrics(by_task, counted, [c.task for c in d.clients])}
        return {**row, "bytes_eval": eval_bytes, "client_eval_s": compute,
                "eval_rejected": rejected,
                "eval_wall_s": time.perf_counter() - t0}

    def run_round(self, rnd: int) -> dict[str, Any]:
        row: dict[str, Any] = {"round": rnd + 1}
        if self.cfg.train.lr_schedule != "constant":  # the factor on every client lr this round
            row["lr_factor"] = round_lr_factor(self.cfg.train, rnd, self.cfg.rounds)
        row.update(self.train_round(rnd))
        last = rnd + 1 == self.cfg.rounds
        if last or (rnd + 1) % self.cfg.eval.every == 0:
            row.update(self.evaluate(rnd))
        else:
            row.update({"acc_global": None, **dict.fromkeys(PERSONAL_KEYS)})
        row["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return row


def eval_reply(ex, rnd: int):
    """The decoded evaluation reply, or None (logged) if it is malformed: not an update of
    this client and round, or no `EvalResult` (correct/total integers, 0 <= correct <= total)."""
    try:
        res = ex.reply
        r = res.read(EvalResult)
    except PayloadError as e:
        res, why = None, str(e)
    else:
        ok = 0 <= r.correct <= r.total and (res.round, res.client_id) == (rnd, ex.task.client_id)
        why = "" if ok else "correct/total/round/client do not match the evaluation task"
        res = res if ok else None
    if res is None:
        log.warning("round %d: rejected evaluation reply of client %d: %s", rnd,
                    ex.task.client_id, why)
    return res


def train_loss(update) -> float | None:
    """The update's reported training loss (None when it reports none or a malformed one)."""
    try:
        return update.read(TrainReport).loss
    except PayloadError:
        return None


def extra_metrics(res) -> dict[str, Any]:
    """A client's evaluation metrics but its counts (correct, total), for the per-client
    summary (a generate run's `loss` stays in it)."""
    counts = fields_of(EvalResult(0, 0))
    return {k: v for k, v in res.metrics.items() if k not in counts}


def _mean(values) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None
