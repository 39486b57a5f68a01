"""Which SuperNode serves which fedfm client, and the checks on what comes back from a node.

Discovery: a SuperNode's client id is its node config `partition-id`, which only the node knows,
so the server asks every node it has not seen yet (a `query` message) and keeps
client id -> node id. `NodeMap.refresh` repeats this before every exchange, so a SuperNode
that was restarted (it gets a new node id) serves its client again from the next round on,
and a client whose node is offline (not in `grid.get_node_ids()`) is dropped at once instead
of being waited for.

Replies are untrusted bytes from a peer: `reply_blob` never raises (a reply without a fedfm
payload becomes b"", which validation rejects), and `compute_seconds` accepts only a finite
number >= 0. The runner validates the blobs (Inbox for updates, eval_reply for evaluations).
"""

from __future__ import annotations

import logging
import math
import time

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedfm.core.errors import ConfigError, PayloadError
from fedfm.flower.codec import blob_of, info_of, partition_of

log = logging.getLogger("fedfm")
WAIT_LOG_EVERY_S = 10.0
# how often the server asks the SuperLink for replies (Flower's Grid.send_and_receive: 3 s,
# which adds up to 3 s to every exchange). Not lower: with `--database` the SuperLink keeps its
# state in SQLite, and on a loaded machine faster polling by every process (0.2-0.5 s) made it
# answer "database is locked" (seen once in tests/test_flower_deploy.py at load ~25).
PULL_EVERY_S = 1.0


# grids that get fedfm's pull loop: the deployment's (Flower's simulation grid pulls every
# 0.1 s itself, and with this loop its query replies never arrived: left to its own method)
PULL_GRIDS = ("HttpGrid",)


def send_and_receive(grid: Grid, messages: list[Message], timeout_s: float) -> list[Message]:
    """Grid.send_and_receive, pulling replies every PULL_EVERY_S until all are in or
    `timeout_s` has passed, on the deployment grid; other grids use their own method."""
    if type(grid).__name__ not in PULL_GRIDS:
        return list(grid.send_and_receive(messages, timeout=timeout_s))
    ids = set(grid.push_messages(messages))
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while ids:
        got = list(grid.pull_messages(ids))
        out += got
        ids -= {m.metadata.reply_to_message_id for m in got}
        if not ids or time.monotonic() >= deadline:
            break
        time.sleep(PULL_EVERY_S)
    return out
# what a crafted payload may raise from a decoder (fedfm.transport.messages.decode should raise only
# PayloadError; the Flower server boundary does not rely on it)
MALFORMED = (PayloadError, ValueError, TypeError, KeyError, IndexError, RecursionError,
             OverflowError, MemoryError)


def query(grid: Grid, node_ids: list[int], num_clients: int, timeout_s: float) -> dict[int, int]:
    """Ask `node_ids` their partition-id; returns client id -> node id for valid answers."""
    msgs = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in node_ids]
    found: dict[int, int] = {}
    for r in send_and_receive(grid, msgs, max(timeout_s, 1.0)):
        pid = partition_of(r.content) if r.has_content() else None
        if pid is not None and 0 <= pid < num_clients:
            found[pid] = r.metadata.src_node_id
    return found


def _missing_error(missing: list[int], num_clients: int, timeout_s: float) -> ConfigError:
    return ConfigError(
        f"Flower: no SuperNode serves client(s) {missing[:10]} after waiting {timeout_s:g} s "
        f"(flower.connect_timeout_s). Start one SuperNode per client: `fedfm flower supernode "
        f"--partition K --num-partitions {num_clients}` (each picks its own free local port), "
        f"check their logs, or raise flower.connect_timeout_s.")


def discover(grid: Grid, num_clients: int, timeout_s: float) -> dict[int, int]:
    """client id -> node id: wait (at most `timeout_s`) until every client has a node,
    logging which clients are still missing every WAIT_LOG_EVERY_S seconds."""
    start = time.monotonic()
    deadline, next_log = start + timeout_s, start + WAIT_LOG_EVERY_S
    nodes: dict[int, int] = {}
    asked: set[int] = set()
    while len(nodes) < num_clients:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if new:
            asked.update(new)
            found = query(grid, new, num_clients, deadline - time.monotonic())
            nodes.update({c: n for c, n in found.items() if c not in nodes})
        missing = sorted(set(range(num_clients)) - set(nodes))
        now = time.monotonic()
        if missing and now > deadline:
            raise _missing_error(missing, num_clients, timeout_s)
        if missing and now > next_log:
            log.warning("Flower: waiting for the SuperNodes of client(s) %s (%d of %d connected, "
                        "%.0f s left of flower.connect_timeout_s)", missing[:10], len(nodes),
                        num_clients, deadline - now)
            next_log = now + WAIT_LOG_EVERY_S
        if missing:
            time.sleep(0.2)
    return nodes


class NodeMap:
    """client id -> node id, refreshed before each exchange (restarted nodes rejoin)."""

    def __init__(self, grid: Grid | None, nodes: dict[int, int], num_clients: int,
                 timeout_s: float = 60.0):
        self.grid, self.nodes, self.timeout_s = grid, dict(nodes), timeout_s
        self.num_clients = num_clients
        self.seen: set[int] = set(nodes.values())
        self.online: set[int] = set(nodes.values())

    def refresh(self) -> None:
        """Query nodes that appeared since the last call; newer nodes win a client id."""
        if self.grid is None:
            return
        self.online = set(self.grid.get_node_ids())
        new = sorted(self.online - self.seen)
        if not new:
            return
        self.seen.update(new)
        for cid, node in sorted(query(self.grid, new, self.num_clients, self.timeout_s).items()):
            if self.nodes.get(cid) != node:
                log.warning("Flower: client %d is now served by node %d (was %s)", cid, node,
                            self.nodes.get(cid))
                self.nodes[cid] = node

    def reachable(self, cid: int) -> bool:
        return cid in self.nodes and self.nodes[cid] in self.online


def reply_blob(reply: Message, cid: int, rnd: int) -> bytes:
    """The reply's fedfm payload, or b"" (validation then rejects it) with a warning."""
    try:
        return blob_of(reply.content)
    except PayloadError as e:
        log.warning("round %d: client %d's reply is unusable: %s", rnd, cid, e)
        return b""


def compute_seconds(reply: Message) -> float:
    """The client-reported compute time if it is a finite number >= 0, else 0."""
    v = info_of(reply.content).get("compute_s", 0.0)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return float(v) if ok else 0.0
