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
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedfm.config import RunConfig
from fedfm.errors import ConfigError, PayloadError
from fedfm.flower.client import CONFIG_KEY
from fedfm.flower.codec import blob_of, info_of, partition_of, to_content
from fedfm.messages import ClientTask, decode, encode
from fedfm.sim.clients import EVALUATE, TRAIN, Exchange
from fedfm.sim.personal import personal_metrics
from fedfm.sim.runner import EmbeddedRunner
from fedfm.sim.seeds import sample_clients
from fedfm.validation import expected_schema, validate_update

log = logging.getLogger("fedfm")
MESSAGE_TYPE = {TRAIN: "train", EVALUATE: "evaluate"}


def discover(grid: Grid, num_clients: int, timeout_s: float) -> dict[int, int]:
    """client id -> node id: wait for the nodes, ask each its `partition-id` (a query message)."""
    deadline = time.monotonic() + timeout_s
    nodes: dict[int, int] = {}
    asked: set[int] = set()
    while len(nodes) < num_clients:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if new:
            asked.update(new)
            msgs = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in new]
            for r in grid.send_and_receive(msgs, timeout=max(deadline - time.monotonic(), 1)):
                pid = partition_of(r.content) if r.has_content() else None
                if pid is not None and 0 <= pid < num_clients and pid not in nodes:
                    nodes[pid] = r.metadata.src_node_id
        if time.monotonic() > deadline:
            missing = sorted(set(range(num_clients)) - set(nodes))
            raise ConfigError(
                f"Flower: no SuperNode serves client(s) {missing[:10]} after {timeout_s:.0f} s. "
                f"Start one SuperNode per client with --node-config 'partition-id=K "
                f"num-partitions={num_clients}' (or raise flower.connect_timeout_s).")
        if len(nodes) < num_clients:
            time.sleep(0.2)
    return nodes


class FlowerClients:
    """The runner's transport to SuperNodes: all of a round's tasks go out at once, replies
    come back in task order. A client that errs or times out is dropped from the round."""

    def __init__(self, grid: Grid, nodes: dict[int, int], dtype: str = "fp32",
                 timeout_s: float = 3600.0, config_json: str | None = None):
        self.grid, self.nodes, self.dtype, self.timeout_s = grid, nodes, dtype, timeout_s
        # sent along when one simulation hosts several runs (the client builds that world)
        self.info = {CONFIG_KEY: config_json} if config_json else None

    @classmethod
    def for_config(cls, grid: Grid, nodes: dict[int, int], cfg: RunConfig,
                   send_config: bool = False) -> FlowerClients:
        text = json.dumps(cfg.to_dict(), default=str) if send_config else None
        return cls(grid, nodes, cfg.comm.dtype, cfg.flower.reply_timeout_s, text)

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
        msgs = self.messages(tasks, rnd, phase)
        by_client = self.replies_by_client(self.grid.send_and_receive(msgs, timeout=self.timeout_s))
        for task, msg in zip(tasks, msgs):
            reply = by_client.get(task.client_id)
            if reply is None:
                log.warning("round %d: no %s reply from client %d (dropped)", rnd,
                            MESSAGE_TYPE[phase], task.client_id)
                continue
            down = blob_of(msg.content)
            secs = float(info_of(reply.content).get("compute_s", 0.0))
            yield Exchange(decode(down), blob_of(reply.content), len(down), secs)


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
        rnd, updates = server_round - 1, []
        for cid, reply in FlowerClients(None, self.nodes).replies_by_client(replies).items():
            task = self._tasks.get(cid)
            if task is None:
                continue
            verdict = validate_update(blob_of(reply.content), task, self.cfg.validation,
                                      expected_schema(self.algo, task), current_round=rnd)
            if verdict.ok:
                updates.append(verdict.update)
            else:
                log.warning("round %d: rejected update of %s", rnd, verdict.rejection)
        updates.sort(key=lambda u: u.client_id)  # the embedded runner's (sampled) order
        extras = self.algo.aggregate_train(rnd, updates)
        metrics = {k: float(v) for k, v in extras.items() if isinstance(v, (int, float))}
        return ArrayRecord(self.algo.global_tensors()), MetricRecord(
            {"accepted": len(updates), **metrics})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        rnd = server_round - 1
        tasks = self.algo.configure_evaluate(rnd, self.runner.personal_clients)
        return self.transport(grid).messages(tasks, rnd, EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        results = []
        for reply in FlowerClients(None, self.nodes).replies_by_client(replies).values():
            try:
                res = decode(blob_of(reply.content))
            except PayloadError as e:
                log.warning("evaluation reply refused: %s", e)
                continue
            results.append((res.metrics["correct"], res.metrics["total"]))
        metrics = personal_metrics(results)
        return MetricRecord(metrics) if results and None not in metrics.values() else None

    def summary(self) -> None:
        log.info("FedfmStrategy(%s) over %d client nodes", self.algo.name, len(self.nodes))


def _metric_record(row: dict[str, Any]) -> MetricRecord:
    return MetricRecord({k: float(v) for k, v in row.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
