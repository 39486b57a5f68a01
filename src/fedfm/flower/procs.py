"""Start a Flower command and own everything it starts: `fedfm flower superlink|supernode|run`.

Flower's servers start children of their own (flower-superexec, then one flwr-serverapp or
flwr-clientapp per task). A plain `subprocess.call` leaves them running, with their ports,
when a service manager stops the fedfm process with SIGTERM. So:

  child = Popen(cmd, start_new_session=True)   its own process group: cmd and all it starts
          + PR_SET_PDEATHSIG=SIGTERM (Linux)   the child is told if fedfm itself is SIGKILLed
  SIGTERM / SIGINT / SIGHUP to fedfm  ->  (on_stop, e.g. `flwr stop RUN_ID`) then the same
                                         signal to the whole group
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
import threading
import time
from collections.abc import Callable
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


def _pump(stream, on_line: Callable[[str], None]) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        on_line(line)


def supervise(cmd: list[str], grace_s: float = 10.0, on_line: Callable[[str], None] | None = None,
              on_stop: Callable[[], None] | None = None) -> int:
    """Run `cmd` in its own process group; forward stop signals; leave nothing behind.
    on_line: sees each line the command prints (which is still printed);
    on_stop: called once when a stop signal arrives, before it is forwarded."""
    quiet_env()
    io = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True,
          "errors": "replace"} if on_line else {}
    child = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **io)
    reader = None
    if on_line:
        reader = threading.Thread(target=_pump, args=(child.stdout, on_line), daemon=True)
        reader.start()
    asked: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _f: asked.append(signum))
                for s in STOP_SIGNALS}
    try:
        rc = _wait(child, asked, grace_s, on_stop)
    finally:
        stop_group(child.pid, grace_s)
        for s, h in previous.items():
            signal.signal(s, h)
    if reader is not None:
        reader.join(timeout=5)
    return 128 + asked[0] if asked else rc


def _wait(child: subprocess.Popen, asked: list[int], grace_s: float,
          on_stop: Callable[[], None] | None) -> int:
    """Wait for `child`; on the first stop signal: on_stop(), forward it, allow grace_s."""
    forwarded = None
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if asked and forwarded is None:
            if on_stop is not None:
                on_stop()
            try:
                os.killpg(child.pid, asked[0])
            except ProcessLookupError:
                pass
            forwarded = time.monotonic()
        elif forwarded is not None and time.monotonic() - forwarded > grace_s:
            stop_group(child.pid, 0.0, signal.SIGKILL)  # it ignored the signal
