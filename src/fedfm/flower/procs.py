"""Start a Flower command and own everything it starts: `fedfm flower superlink|supernode|run`.

Flower's servers start children of their own (flower-superexec, then one flwr-serverapp or
flwr-clientapp per task). A plain `subprocess.call` leaves them running, with their ports,
when a service manager stops the fedfm process with SIGTERM. So:

  child = Popen(cmd, start_new_session=True)   its own process group: cmd and all it starts
          + PR_SET_PDEATHSIG=SIGTERM (Linux)   the child is told if fedfm itself is SIGKILLed
  SIGTERM / SIGINT / SIGHUP to fedfm  ->  the same signal to the whole group
  the child exits (by itself or signalled)  ->  SIGTERM to what is left of the group, then
                                               SIGKILL after `grace_s`
Exit status: the child's, or 128 + signal when fedfm was asked to stop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedfm.flower import quiet_env

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid` (Linux /proc; else a probe)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    out = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def stop_group(pgid: int, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """`sig` to the group, wait up to grace_s for it to be gone, then SIGKILL the rest."""
    for s, wait in ((sig, grace_s), (signal.SIGKILL, 5.0)):
        if not group_members(pgid):
            return
        try:
            os.killpg(pgid, s)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


def supervise(cmd: list[str], grace_s: float = 10.0) -> int:
    """Run `cmd` in its own process group; forward stop signals; leave nothing behind."""
    quiet_env()
    child = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent)
    asked: list[int] = []

    def forward(signum, _frame) -> None:
        asked.append(signum)
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        while True:
            try:
                rc = child.wait(timeout=grace_s if asked else 0.5)
                break
            except subprocess.TimeoutExpired:
                if asked:  # it ignored the signal for grace_s
                    stop_group(child.pid, 0.0, signal.SIGKILL)
    finally:
        stop_group(child.pid, grace_s)
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 + asked[0] if asked else rc
