"""Flower runtime under hostile or missing clients (in process, no Ray, no SuperLink).

A crafted upload (not a fedfm payload, a malformed header, a task instead of an update, NaN,
a bogus compute time, an evaluation reply with impossible counts) is a rejected update: the
round finishes with the other clients, through the runner's transport (`FlowerClients`) and
through Flower's own Strategy interface (`FedfmStrategy`). A node that goes offline is dropped
at once; a restarted node (new node id) serves its client again from the next round on.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict  # noqa: E402

from fedfm.config import build_config  # noqa: E402
from fedfm.flower.client import make_client_app  # noqa: E402
from fedfm.flower.codec import INFO, PAYLOAD, to_content  # noqa: E402
from fedfm.flower.inprocess import FIRST_NODE_ID, InProcessGrid  # noqa: E402
from fedfm.flower.strategy import FedfmStrategy, FlowerClients, discover  # noqa: E402
from fedfm.run import run  # noqa: E402
from fedfm.transport.messages import ClientTask, ClientUpdate, decode, encode  # noqa: E402
from tests.conftest import tiny_raw  # noqa: E402


def _raw_header(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def _nan_update(task: ClientTask) -> bytes:
    t = {k: torch.full_like(v, math.nan) for k, v in task.tensors.items()}
    return encode(ClientUpdate(task.round, task.client_id, 10, t, {}))


# name -> (task, honest reply content) -> crafted reply content
CRAFTED = {
    "garbage": lambda task, ok: to_content(b"\x00" * 64),
    "no payload": lambda task, ok: RecordDict(),
    "wrong stype": lambda task, ok: RecordDict({PAYLOAD: ArrayRecord({"blob": Array(
        dtype="uint8", shape=(4,), stype="numpy.ndarray", data=b"abcd")})}),
    "metadata is a number": lambda task, ok: to_content(
        _raw_header(b'{"__metadata__":{"fedfm":5}}')),
    "100000 nested [": lambda task, ok: to_content(_raw_header(b"[" * 100_000)),
    "a task, not an update": lambda task, ok: to_content(encode(task)),
    "NaN tensors": lambda task, ok: to_content(_nan_update(task)),
    "bogus compute_s": lambda task, ok: RecordDict({PAYLOAD: ok[PAYLOAD],
                                                    INFO: ConfigRecord({"compute_s": "x"})}),
}


class CraftingApp:
    """The real ClientApp, except that client `evil`'s train reply of round r is CRAFTED[r]
    and its evaluation replies claim more correct than total answers."""

    def __init__(self, app, evil: int = 1):
        self.app, self.evil, self.names = app, evil, list(CRAFTED)

    def __call__(self, msg: Message, context) -> Message:
        reply = self.app(msg, context)
        if context.node_config["partition-id"] != self.evil or msg.metadata.message_type == "query":
            return reply
        task = decode(bytes(msg.content[PAYLOAD]["blob"].data))
        if msg.metadata.message_type == "evaluate":
            bad = ClientUpdate(task.round, task.client_id, 1, {}, {"correct": 9, "total": 1})
            return Message(to_content(encode(bad)), reply_to=msg)
        return Message(CRAFTED[self.names[task.round]](task, reply.content), reply_to=msg)


def _cfg(tmp_path, name: str, rounds: int):
    return build_config(tiny_raw(out=str(tmp_path / name), rounds=rounds, **{
        "data.num_clients": 3, "eval.every": rounds}))


def test_crafted_uploads_are_rejected_and_rounds_finish(tmp_path, monkeypatch):
    """One run, one crafted upload per round from client 1: every round aggregates the two
    honest clients (rejected == 1 where the payload is not an acceptable update)."""
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, "run", len(CRAFTED))
    grid = InProcessGrid(make_client_app(cfg), 3)
    grid.app = CraftingApp(grid.app)
    nodes = discover(grid, 3, timeout_s=10)
    s = run(cfg, quiet=True, transport=lambda w: FlowerClients.for_config(grid, nodes, cfg))
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(CRAFTED)
    for name, row in zip(CRAFTED, rows):
        want = 0 if name == "bogus compute_s" else 1  # an honest update, its time read as 0
        assert row["rejected"] == want, (name, row)
        assert not row.get("skipped"), name
    # the lying evaluation reply is refused: personal accuracy is the other two clients'
    assert [c["id"] for c in s["clients"] if "acc_personal" in c] == [0, 2]
    assert rows[-1]["eval_rejected"] == 1
    log = [json.loads(x) for x in (tmp_path / "run/flower.jsonl").read_text().splitlines()]
    assert all(r["replied"] == [0, 1, 2] for r in log)


def test_strategy_rejects_crafted_uploads(tmp_path, monkeypatch):
    """FedfmStrategy.aggregate_train (Flower's Strategy interface) never raises on a crafted
    reply: it counts it as rejected and aggregates the honest ones."""
    from fedfm.sim.runner import EmbeddedRunner
    from fedfm.sim.world import build_world

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, "strategy", 1)
    world = build_world(cfg)
    world.algorithm.init_server(world.model)
    grid = InProcessGrid(make_client_app(cfg), 3)
    strategy = FedfmStrategy(EmbeddedRunner(world), discover(grid, 3, timeout_s=10))
    msgs = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    honest = list(grid.send_and_receive(msgs))
    evil = next(i for i, m in enumerate(msgs) if m.metadata.dst_node_id == FIRST_NODE_ID + 1)
    task = decode(bytes(msgs[evil].content[PAYLOAD]["blob"].data))
    for name, craft in CRAFTED.items():
        replies = list(honest)
        replies[evil] = Message(craft(task, honest[evil].content), reply_to=msgs[evil])
        _, metrics = strategy.aggregate_train(1, replies)
        want = 0 if name == "bogus compute_s" else 1
        assert (metrics["rejected"], metrics["accepted"]) == (want, 3 - want), name
    ev = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(ev))
    i = next(i for i, m in enumerate(ev) if m.metadata.dst_node_id == FIRST_NODE_ID + 1)
    bad = ClientUpdate(0, 1, 1, {}, {"correct": 9, "total": 1})
    replies[i] = Message(to_content(encode(bad)), reply_to=ev[i])
    assert 0 <= strategy.aggregate_evaluate(1, replies)["acc_personal_mean"] <= 1


class FlakyGrid(InProcessGrid):
    """Node of client 2 is offline in round 1 (index 0 -> group "0"), then comes back as a
    NEW node id (a restarted SuperNode) from round 2 on."""

    def get_node_ids(self):
        ids = super().get_node_ids()
        return [n for n in ids if n != self.down] if self.down else ids


def test_offline_node_is_dropped_and_restarted_node_rejoins(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    cfg = build_config({**tiny_raw(out=str(tmp_path / "run"), rounds=3, **{
        "data.num_clients": 3, "eval.every": 3, "availability.min_completion": 0.6})})
    grid = FlakyGrid(make_client_app(cfg), 3)
    grid.down = None
    nodes = discover(grid, 3, timeout_s=10)
    clients = FlowerClients.for_config(grid, nodes, cfg)
    old = nodes[2]

    def exchange(tasks, rnd, phase, inner=clients.exchange):
        if rnd == 0:
            grid.down = old  # crashed
        elif rnd == 1 and grid.down == old:  # restarted: same partition, new node id
            grid.contexts[old + 100] = grid.contexts.pop(old)
            grid.down = None
        return inner(tasks, rnd, phase)

    clients.exchange = exchange
    run(cfg, quiet=True, transport=lambda w: clients)
    log = [json.loads(x) for x in (tmp_path / "run/flower.jsonl").read_text().splitlines()]
    train = {r["round"]: r for r in log if r["phase"] == "train"}
    assert train[1]["replied"] == [0, 1] and train[1]["offline"] == [2]
    assert train[2]["replied"] == [0, 1, 2] and train[2]["nodes"]["2"] == old + 100
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["rejected"] for r in rows] == [0, 0, 0] and not any(r.get("skipped") for r in rows)


def test_missing_node_stops_discovery_with_a_clear_message(tiny_cfg, tmp_path, monkeypatch):
    from fedfm.core.errors import ConfigError

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    grid = InProcessGrid(make_client_app(tiny_cfg()), 2)  # 2 SuperNodes for 3 clients
    with pytest.raises(ConfigError, match=r"client\(s\) \[2\] after waiting 0.5 s .*"
                                          r"--num-partitions 3.*flower.connect_timeout_s"):
        discover(grid, 3, timeout_s=0.5)
