"""A SuperNode with shorter Flower timing constants (`fedfm flower supernode --heartbeat-s ...`).

Flower 1.4x hard-codes three waits in the SuperNode process, none of them a CLI flag:
  heartbeat interval  30 s  a crashed node is declared unavailable 2 x this after its last
                            heartbeat, so a round that lost a node waits up to 60 s for it;
  idle pull interval   3 s  a node with no task asks the SuperLink again after this;
  retry back-off cap  20 s  the longest pause between reconnect attempts (SuperLink down).
On a LAN (or in tests) shorter ones detect crashes and pick up tasks sooner, at the price of
more small requests to the SuperLink. This module imports the SuperNode, sets the constants in
every flwr module that holds them, then runs `flower-supernode` with the remaining arguments:

    python -m fedfm.flower.node_timing HEARTBEAT_S POLL_S RETRY_MAX_S flower-supernode ARGS...

(a value of 0 keeps Flower's default). The SuperLink accepts heartbeat intervals of 10-1800 s.
"""

from __future__ import annotations

import sys
import time

from fedfm.core.errors import ConfigError

HEARTBEAT_RANGE = (10.0, 1800.0)  # flwr.common.constant.HEARTBEAT_MIN/MAX_INTERVAL
FLOWER_POLL_S = 3.0  # the literal `time.sleep(3)` of flwr.supernode.start_client_internal


def check(heartbeat_s: float | None, poll_s: float | None, retry_max_s: float | None) -> None:
    lo, hi = HEARTBEAT_RANGE
    if heartbeat_s is not None and not lo <= heartbeat_s <= hi:
        raise ConfigError(f"--heartbeat-s must be in {lo:.0f}..{hi:.0f} s (the SuperLink refuses "
                          f"other heartbeat intervals), got {heartbeat_s}.")
    for name, v in (("--poll-s", poll_s), ("--retry-max-s", retry_max_s)):
        if v is not None and not 0 < v <= 3600:
            raise ConfigError(f"{name} must be in (0, 3600] s, got {v}.")


def command(heartbeat_s: float | None, poll_s: float | None, retry_max_s: float | None,
            flower_cmd: list[str]) -> list[str]:
    """`flower_cmd` unchanged when every value is None (Flower's defaults), else wrapped."""
    check(heartbeat_s, poll_s, retry_max_s)
    if heartbeat_s is None and poll_s is None and retry_max_s is None:
        return flower_cmd
    vals = [str(v or 0) for v in (heartbeat_s, poll_s, retry_max_s)]
    return [sys.executable, "-m", "fedfm.flower.node_timing", *vals, *flower_cmd]


class _PollClock:
    """`time` for flwr.supernode.start_client_internal: its 3 s idle sleep becomes `poll_s`."""

    def __init__(self, poll_s: float):
        self.poll_s = poll_s

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.poll_s if seconds == FLOWER_POLL_S else seconds)


# the SuperNode's own heartbeat to the SuperLink (not the node's local state, which times its
# ClientApp processes' heartbeats: those processes keep Flower's 30 s)
HEARTBEAT_MODULES = ("flwr.supercore.heartbeat", "flwr.supernode.fleet_http_connection",
                     "flwr.supernode.fleet_grpc_connection")


def patch(heartbeat_s: float, poll_s: float, retry_max_s: float) -> None:
    """Set the constants (0 = keep) in the loaded flwr modules that bound them by name (they
    are read when used, so patching after import is enough)."""
    import flwr.supernode.start_client_internal as sci

    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] != "flwr":
            continue
        if heartbeat_s and name in HEARTBEAT_MODULES and hasattr(mod, "HEARTBEAT_DEFAULT_INTERVAL"):
            mod.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_s
        if retry_max_s and hasattr(mod, "MAX_RETRY_DELAY"):
            mod.MAX_RETRY_DELAY = retry_max_s
    if poll_s:
        sci.time = _PollClock(poll_s)


def main(argv: list[str]) -> None:
    heartbeat_s, poll_s, retry_max_s = (float(v) for v in argv[:3])
    from flwr.supernode.cli import flower_supernode

    patch(heartbeat_s, poll_s, retry_max_s)

    sys.argv = argv[3:]
    flower_supernode()


if __name__ == "__main__":
    main(sys.argv[1:])
