"""Flower deployment processes on loopback (slow: real SuperLink/SuperNode processes).

- several SuperNodes on one machine without --port: each picks a free local port;
- SIGTERM / SIGINT to a `fedfm flower superlink|supernode` process stops everything it started:
  no process of its tree is left and its ports are free again.
"""

from __future__ import annotations

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
    with socket.socket() as s:
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
