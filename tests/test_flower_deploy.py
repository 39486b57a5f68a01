"""Flower deployment processes on loopback (slow: real SuperLink/SuperNode processes).

- several SuperNodes on one machine without --port: each picks a free local port;
- SIGINT to `fedfm flower run --stream` stops the Flower run it started (`flwr stop`);
- SIGTERM / SIGINT to a `fedfm flower superlink|supernode` process stops everything it started:
  no process of its tree is left and its ports are free again;
- faults: a SuperNode crash and restart, a SuperLink crash and `--resume` (see the test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedfm.flower.procs import free_port  # noqa: E402

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    """All live descendants of `pid` (Linux /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if state != "Z":
                kids.setdefault(int(ppid), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def port_free(port: int) -> bool:
    """Nothing listens on it: a server can bind it again (SO_REUSEADDR, as servers do, so
    closed connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


class Procs:
    """fedfm commands started by a test, each in its own session (cleaned up by group)."""

    def __init__(self, root: Path):
        self.root, self.procs = root, []
        self.env = dict(os.environ, FLWR_HOME=str(root / "home"), FEDFM_CACHE=str(root / "cache"))

    def start(self, log: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "fedfm.cli", "flower", *args], env=self.env,
                             stdout=open(self.root / log, "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.root / name).read_text(errors="replace")

    def cleanup(self) -> None:
        for p in self.procs:
            for pid in [p.pid, *children(p.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _run_stops_on_sigint(procs: Procs, tmp_path: Path, link: str, sl: subprocess.Popen) -> None:
    """Ctrl-C on `fedfm flower run --stream` stops the CLI and the Flower run it started."""
    import tomli_w

    from tests.conftest import tiny_raw

    cfg = tmp_path / "run.toml"
    cfg.write_text(tomli_w.dumps(tiny_raw(out=str(tmp_path / "run"), rounds=50,
                                          **{"data.num_clients": 2})))
    run = procs.start("run.log", "run", str(cfg), "--superlink", link, "--stream")
    wait_for(lambda: "Successfully started run" in procs.log("run.log"), 90, "the run")
    run_id = procs.log("run.log").split("Successfully started run")[1].split()[0]
    wait_for(lambda: any("flwr-serverapp" in " ".join(cmdline(c)) for c in children(sl.pid)),
             60, "the ServerApp process")
    os.kill(run.pid, signal.SIGINT)
    assert run.wait(timeout=90) == 128 + signal.SIGINT
    assert f"stopping Flower run {run_id}" in procs.log("run.log")
    conn = "fedfm-" + link.replace(":", "-").replace(".", "-")
    status = subprocess.run(["flwr", "list", conn, "--run-id", run_id, "--format", "json"],
                            env=procs.env, capture_output=True, text=True, timeout=60).stdout
    assert "stopped" in status, status
    wait_for(lambda: not any("flwr-serverapp" in " ".join(cmdline(c))
                             for c in children(sl.pid)), 60, "the ServerApp to exit")


def test_supernodes_share_a_machine_and_signals_stop_everything(tmp_path):
    procs = Procs(tmp_path)
    port = free_port()
    link = f"127.0.0.1:{port}"
    try:
        sl = procs.start("superlink.log", "superlink", "--port", str(port))
        nodes = [procs.start(f"node{i}.log", "supernode", "--partition", str(i),
                             "--num-partitions", "2", "--superlink", link) for i in range(2)]
        for i in range(2):  # both connected: no "address already in use" without --port
            wait_for(lambda i=i: "SuperNode ID" in procs.log(f"node{i}.log"), 90, f"node {i}")
        runtime_ports = []
        for n in nodes:
            sn = next(p for p in children(n.pid) if "flower-supernode" in " ".join(cmdline(p)))
            args = cmdline(sn)
            runtime_ports.append(int(args[args.index("--port") + 1]))
        assert len(set(runtime_ports)) == 2 and not any(port_free(p) for p in runtime_ports)
        _run_stops_on_sigint(procs, tmp_path, link, sl)
        trees = {p.pid: children(p.pid) for p in (sl, *nodes)}
        assert all(len(t) >= 2 for t in trees.values()), trees  # flower server + its superexec
        # a service manager stops them by process id: SIGTERM (and Ctrl-C = SIGINT)
        for p, sig in ((nodes[0], signal.SIGTERM), (nodes[1], signal.SIGINT),
                       (sl, signal.SIGTERM)):
            os.kill(p.pid, sig)
            assert p.wait(timeout=30) == 128 + sig
        wait_for(lambda: not any(alive(c) for t in trees.values() for c in t), 15,
                 "every process they started to exit")
        assert port_free(port) and all(port_free(p) for p in runtime_ports)
    finally:
        procs.cleanup()


# ---- faults on a loopback deployment: SuperLink + 3 SuperNodes, separate processes ---------
ROUNDS = 3


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _kill_tree(p: subprocess.Popen) -> None:
    """SIGKILL a command and all it started (a crash: no chance to clean up)."""
    for pid in [*children(p.pid), p.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=10)


def _fault_raw(out: Path) -> dict:
    from tests.conftest import tiny_raw

    return tiny_raw(out=str(out), rounds=ROUNDS, **{
        "data.num_clients": 3, "eval.every": ROUNDS, "availability.min_completion": 0.6,
        "checkpoint.enabled": True, "flower.reply_timeout_s": REPLY_TIMEOUT_S,
        "flower.connect_timeout_s": 120.0})


REPLY_TIMEOUT_S = 60.0
# Flower's SuperNode waits, shortened (fedfm.flower.node_timing): the crashed node is declared
# unavailable 20 s (2 x 10 s heartbeat) after its last heartbeat instead of 60 s, and reconnects
# after the SuperLink crash retry within 2 s instead of 20 s. The idle task poll stays at
# Flower's 3 s: with --poll-s 0.5-1 (every node polling the SuperLink's SQLite state) two runs
# at load ~25 failed on "database is locked".
FAST_NODE = ("--heartbeat-s", "10", "--retry-max-s", "2")


def _reference(tmp_path: Path, missing: set[tuple[int, int]]) -> Path:
    """The same run uninterrupted, in process, with the same (round, client) train replies
    missing as in the deployment."""
    from fedfm.config import build_config
    from fedfm.flower.client import make_client_app
    from fedfm.flower.inprocess import InProcessGrid
    from fedfm.flower.strategy import FlowerClients, discover
    from fedfm.run import run

    cfg = build_config(_fault_raw(tmp_path / "reference"))
    grid = InProcessGrid(make_client_app(cfg), 3)
    deliver = grid.send_and_receive

    def lossy(messages, timeout=None):
        msgs = list(messages)
        keep = [m for m in msgs if m.metadata.message_type != "train"
                or (int(m.metadata.group_id) + 1, m.metadata.dst_node_id - 1001) not in missing]
        return deliver(keep, timeout=timeout)

    grid.send_and_receive = lossy
    nodes = discover(grid, 3, timeout_s=10)
    run(cfg, quiet=True, transport=lambda w: FlowerClients.for_config(grid, nodes, cfg))
    return tmp_path / "reference"


def test_deployment_survives_node_and_superlink_crashes(tmp_path):
    """SuperLink + 3 SuperNodes on 127.0.0.1, fedavg, 3 rounds, min_completion 0.6:
    1. SIGKILL SuperNode 2 while it holds its round-1 task -> round 1 aggregates clients 0, 1
       (after flower.reply_timeout_s) and the run goes on;
    2. restart SuperNode 2 (a new node id) -> it is rediscovered and trains in round 2;
    3. SIGKILL the SuperLink (and the ServerApp it runs) after the round-2 checkpoint, restart
       it on its database, `fedfm flower run --resume` -> the run finishes from that checkpoint;
    the final global tensors equal, bit for bit, an uninterrupted run with the same missing
    replies. Which client trained in which round: RUN/flower.jsonl (written by the server)."""
    import tomli_w
    import torch
    from safetensors.torch import load_file

    procs = Procs(tmp_path)
    port = free_port()
    link = f"127.0.0.1:{port}"
    out = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    cfg.write_text(tomli_w.dumps(_fault_raw(out)))
    db = str(tmp_path / "link.db")
    t0 = time.monotonic()
    try:
        sl = procs.start("superlink.log", "superlink", "--port", str(port), "--database", db)
        nodes = [procs.start(f"node{i}.log", "supernode", "--partition", str(i),
                             "--num-partitions", "3", "--superlink", link, *FAST_NODE)
                 for i in range(3)]
        first = procs.start("run1.log", "run", str(cfg), "--superlink", link, "--stream")
        wait_for(lambda: "Receiving: train message" in procs.log("node2.log"), 240,
                 "SuperNode 2 to receive its round-1 task")
        _kill_tree(nodes[2])
        assert not _rows(out / "metrics.jsonl")  # round 1 was still running
        procs.start("node2b.log", "supernode", "--partition", "2", "--num-partitions", "3",
                    "--superlink", link, *FAST_NODE)
        ckpt = out / "checkpoint/latest.json"
        wait_for(lambda: ckpt.is_file() and json.loads(ckpt.read_text())["round"] >= 2, 240,
                 "the round-2 checkpoint")
        _kill_tree(sl)
        _kill_tree(first)
        done = len(_rows(out / "metrics.jsonl"))
        assert done == 2, done  # killed inside round 3
        procs.start("superlink2.log", "superlink", "--port", str(port), "--database", db)
        second = procs.start("run2.log", "run", str(cfg), "--superlink", link, "--stream",
                             "--resume")
        assert second.wait(timeout=300) == 0, procs.log("run2.log")[-3000:]
        wait_for(lambda: (out / "summary.json").is_file(), 60, "summary.json")
    finally:
        procs.cleanup()
    print(f"deployment fault scenario: {time.monotonic() - t0:.0f} s")
    rows = _rows(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["rejected"] for r in rows] == [0, 0, 0] and not any(r.get("skipped") for r in rows)
    log = _rows(out / "flower.jsonl")
    train = {}
    for r in log:  # the last record per round: the resumed run redoes round 3
        if r["phase"] == "train":
            train[r["round"]] = r
    assert train[1]["sent"] == [0, 1, 2] and train[1]["replied"] == [0, 1]
    assert train[2]["replied"] == [0, 1, 2] and train[2]["nodes"]["2"] != train[1]["nodes"]["2"]
    assert train[3]["replied"] == [0, 1, 2]
    missing = {(rnd, c) for rnd, r in train.items() for c in r["sent"] if c not in r["replied"]}
    assert missing == {(1, 2)}
    ref = _reference(tmp_path, missing)
    got, want = load_file(str(out / "final/global.safetensors")), load_file(
        str(ref / "final/global.safetensors"))
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
