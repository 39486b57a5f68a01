"""A Flower Strategy that delegates to any fedfm algorithm, one message per client node.

fedfm's round (sample -> configure_train -> clients -> validate -> aggregate_train -> evaluate)
is the embedded runner's, unchanged: `FedfmStrategy.start` runs `EmbeddedRunner` with
`FlowerClients` as its transport, so sampling, seeds, validation, metrics rows and bytes are
the embedded ones by construction. Only the hop to the client differs:

  task_k -> encode -> Message(dst = node of client k, "train"/"evaluate") -> SuperNode
         <- Message(reply blob, compute_s) <-

`configure_train` / `aggregate_train` (and the evaluate pair) also implement Flower's own
Strategy interface, for users who drive fedfm algorithms from Flower's `Strategy.start` loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedfm.core.schema import RunConfig
from fedfm.core.seeds import sample_clients
from fedfm.flower.client import CONFIG_KEY
from fedfm.flower.codec import blob_of, to_content
from fedfm.flower.nodes import (  # noqa: F401  (discover: re-exported)
    MALFORMED,
    NodeMap,
    compute_seconds,
    discover,
    reply_blob,
    send_and_receive,
)
from fedfm.sim.clients import EVALUATE, TRAIN, Exchange
from fedfm.sim.personal import personal_metrics
from fedfm.sim.runner import EmbeddedRunner, eval_reply
from fedfm.transport.messages import ClientTask, decode, encode
from fedfm.transport.validation import expected_schema, validate_update

log = logging.getLogger("fedfm")
MESSAGE_TYPE = {TRAIN: "train", EVALUATE: "evaluate"}
PARTICIPATION = "flower.jsonl"  # in the run folder: who was sent a task, who replied


class FlowerClients:
    """The runner's transport to SuperNodes: all of a round's tasks go out at once, replies
    come back in task order. A client that errs, times out or whose node is offline is dropped
    from the round; an unusable reply reaches validation as b"" (rejected). Before each
    exchange, nodes that appeared since are asked which client they serve (a restarted
    SuperNode rejoins). `log_path`: one JSON line per exchange (which clients were sent a task,
    which replied), e.g. RUN_DIR/flower.jsonl."""

    def __init__(self, grid: Grid, nodes: dict[int, int], dtype: str = "fp32",
                 timeout_s: float = 3600.0, config_json: str | None = None,
                 num_clients: int | None = None, log_path: str | Path | None = None):
        self.grid, self.dtype, self.timeout_s = grid, dtype, timeout_s
        self.map = NodeMap(grid, nodes, num_clients or len(nodes), min(timeout_s, 120.0))
        self.log_path = Path(log_path) if log_path else None
        # sent along when one simulation hosts several runs (the client builds that world)
        self.info = {CONFIG_KEY: config_json} if config_json else None

    @property
    def nodes(self) -> dict[int, int]:
        return self.map.nodes

    @classmethod
    def for_config(cls, grid: Grid, nodes: dict[int, int], cfg: RunConfig,
                   send_config: bool = False) -> FlowerClients:
        text = json.dumps(cfg.to_dict(), default=str) if send_config else None
        return cls(grid, nodes, cfg.comm.dtype, cfg.flower.reply_timeout_s, text,
                   cfg.data.num_clients, Path(cfg.out) / PARTICIPATION)

    def messages(self, tasks: list[ClientTask], rnd: int, phase: int) -> list[Message]:
        return [Message(to_content(encode(t, self.dtype), self.info),
                        dst_node_id=self.nodes[t.client_id], message_type=MESSAGE_TYPE[phase],
                        group_id=str(rnd)) for t in tasks]

    def replies_by_client(self, replies: Iterable[Message]) -> dict[int, Message]:
        client_of = {node: cid for cid, node in self.nodes.items()}
        out = {}
        for r in replies:
            cid = client_of.get(r.metadata.src_node_id)
            if r.has_error():
                log.warning("Flower: client %s failed: %s", cid, r.error.reason)
            elif cid is not None:
                out[cid] = r
        return out

    def exchange(self, tasks: list[ClientTask], rnd: int, phase: int) -> Iterator[Exchange]:
        self.map.refresh()
        sent = [t for t in tasks if self.map.reachable(t.client_id)]
        msgs = self.messages(sent, rnd, phase)
        t0 = time.perf_counter()
        replies = send_and_receive(self.grid, msgs, self.timeout_s) if msgs else []
        by_client = self.replies_by_client(replies)
        self._record(rnd, phase, tasks, sent, by_client, time.perf_counter() - t0)
        for task, msg in zip(sent, msgs):
            reply = by_client.get(task.client_id)
            if reply is None:
                continue
            down, blob = blob_of(msg.content), reply_blob(reply, task.client_id, rnd)
            # validated by the runner: Inbox (train), eval_reply (evaluate)
            yield Exchange(decode(down), blob, len(down), compute_seconds(reply))

    def _record(self, rnd: int, phase: int, tasks: list[ClientTask], sent: list[ClientTask],
                by_client: dict[int, Message], wait_s: float) -> None:
        """Log and (with log_path) append which clients got a task and which replied."""
        sent_ids = [t.client_id for t in sent]
        missing = [c for c in sent_ids if c not in by_client]
        offline = [t.client_id for t in tasks if t.client_id not in sent_ids]
        for cid in missing + offline:
            log.warning("round %d: no %s reply from client %d (%s; dropped)", rnd,
                        MESSAGE_TYPE[phase], cid, "node offline" if cid in offline else
                        f"no answer within {self.timeout_s:.0f} s or an error")
        if self.log_path is None or not self.log_path.parent.is_dir():
            return
        row = {"round": rnd + 1, "phase": MESSAGE_TYPE[phase], "sent": sent_ids,
               "replied": sorted(by_client), "offline": offline,
               "nodes": {str(c): n for c, n in sorted(self.nodes.items())},
               "wait_s": round(wait_s, 3), "time": time.time()}
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


class FedfmStrategy(Strategy):
    """Flower Strategy around a fedfm algorithm (one task message per sampled client)."""

    def __init__(self, runner: EmbeddedRunner, nodes: dict[int, int]):
        self.runner, self.algo, self.cfg = runner, runner.algo, runner.cfg
        self.nodes = nodes
        self.rows: list[dict[str, Any]] = []
        self._tasks: dict[int, ClientTask] = {}

    def transport(self, grid: Grid) -> FlowerClients:
        return FlowerClients.for_config(grid, self.nodes, self.cfg)

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 0,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn=None,
              on_row=None) -> Result:
        """fedfm's loop (EmbeddedRunner.run_round) with SuperNodes as clients."""
        self.runner.clients = self.transport(grid)
        result = Result()
        for rnd in range(num_rounds or self.cfg.rounds):
            row = self.runner.run_round(rnd)
            self.rows.append(row)
            if on_row is not None:
                on_row(row)
            result.train_metrics_clientapp[rnd + 1] = _metric_record(row)
        result.arrays = ArrayRecord(self.algo.global_tensors())
        return result

    # ---- Flower's Strategy interface (one round at a time, Flower's own loop) ----
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        rnd, d = server_round - 1, self.runner.world.data
        s = self.cfg.sampling
        clients = sample_clients(d.num_clients, s.fraction, s.min_clients, self.cfg.seed, rnd)
        tasks = self.algo.configure_train(rnd, clients)
        self._tasks = {t.client_id: t for t in tasks}
        return self.transport(grid).messages(tasks, rnd, TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate each reply (a crafted one is rejected and logged, never raised), then
        aggregate the accepted updates in sampled order."""
        rnd, updates, rejected = server_round - 1, [], 0
        for cid, reply in FlowerClients(None, self.nodes).replies_by_client(replies).items():
            task = self._tasks.get(cid)
            if task is None:
                continue
            update = self._accept(reply_blob(reply, cid, rnd), task, rnd)
            if update is None:
                rejected += 1
            else:
                updates.append(update)
        updates.sort(key=lambda u: u.client_id)  # the embedded runner's (sampled) order
        extras = self.algo.aggregate_train(rnd, updates)
        metrics = {k: float(v) for k, v in extras.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return ArrayRecord(self.algo.global_tensors()), MetricRecord(
            {"accepted": len(updates), "rejected": rejected, **metrics})

    def _accept(self, blob: bytes, task: ClientTask, rnd: int):
        try:
            verdict = validate_update(blob, task, self.cfg.validation,
                                      expected_schema(self.algo, task), current_round=rnd)
        except MALFORMED as e:  # a decoder bug must not end the round
            log.warning("round %d: rejected update of client %d: malformed payload (%s: %s)",
                        rnd, task.client_id, type(e).__name__, str(e)[:200])
            return None
        if not verdict.ok:
            log.warning("round %d: rejected update of %s", rnd, verdict.rejection)
        return verdict.update if verdict.ok else None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        rnd = server_round - 1
        tasks = self.algo.configure_evaluate(rnd, self.runner.personal_clients)
        return self.transport(grid).messages(tasks, rnd, EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        rnd, results = server_round - 1, []
        tasks = {t.client_id: t for t in self.algo.configure_evaluate(
            rnd, self.runner.personal_clients)}
        for cid, reply in FlowerClients(None, self.nodes).replies_by_client(replies).items():
            task = tasks.get(cid)
            res = eval_reply(Exchange(task, reply_blob(reply, cid, rnd), 0, 0.0), rnd) if (
                task) else None
            if res is not None:
                results.append((res.metrics["correct"], res.metrics["total"]))
        metrics = personal_metrics(results)
        return MetricRecord(metrics) if results else None

    def summary(self) -> None:
        log.info("FedfmStrategy(%s) over %d client nodes", self.algo.name, len(self.nodes))


def _metric_record(row: dict[str, Any]) -> MetricRecord:
    return MetricRecord({k: float(v) for k, v in row.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
