"""Flower's SuperNode waits, shortened by `fedfm flower supernode --heartbeat-s/--poll-s/
--retry-max-s` (fedfm.flower.node_timing), and the server's reply pull interval."""

from __future__ import annotations

import sys
import time

import pytest

pytest.importorskip("flwr")

from fedfm.cli import main  # noqa: E402
from fedfm.flower import node_timing  # noqa: E402
from fedfm.flower.deploy import supernode_cmd  # noqa: E402


def test_defaults_run_flower_supernode_unchanged():
    cmd = supernode_cmd(0, 2, port=9999)
    assert cmd[0] == "flower-supernode" and "node_timing" not in " ".join(cmd)


def test_timing_flags_wrap_the_command_and_patch_flower(monkeypatch):
    cmd = supernode_cmd(1, 2, port=9999, timing=(10.0, 0.5, None))
    assert cmd[:3] == [sys.executable, "-m", "fedfm.flower.node_timing"]
    assert cmd[3:6] == ["10.0", "0.5", "0"] and cmd[6] == "flower-supernode"
    import flwr.supercore.heartbeat as hb
    import flwr.supercore.retry.http_retry as retry
    import flwr.supernode.fleet_http_connection as conn
    import flwr.supernode.start_client_internal as sci
    from flwr.supernode.cli import flower_supernode  # noqa: F401  (what main() imports first)

    for mod, name in ((hb, "HEARTBEAT_DEFAULT_INTERVAL"), (conn, "HEARTBEAT_DEFAULT_INTERVAL"),
                      (retry, "MAX_RETRY_DELAY")):
        monkeypatch.setattr(mod, name, getattr(mod, name))  # restored after the test
    monkeypatch.setattr(sci, "time", sci.time)
    node_timing.patch(10.0, 0.05, 2.0)
    assert hb.HEARTBEAT_DEFAULT_INTERVAL == conn.HEARTBEAT_DEFAULT_INTERVAL == 10.0
    assert retry.MAX_RETRY_DELAY == 2.0
    t0 = time.monotonic()
    sci.time.sleep(node_timing.FLOWER_POLL_S)  # Flower's idle 3 s pull pause -> 0.05 s
    assert time.monotonic() - t0 < 1.0 and sci.time.monotonic is time.monotonic


@pytest.mark.parametrize("flag,value", [("--heartbeat-s", "5"), ("--heartbeat-s", "4000"),
                                        ("--poll-s", "0"), ("--retry-max-s", "-1")])
def test_bad_timing_is_a_clear_error(flag, value, capsys):
    assert main(["flower", "supernode", "--partition", "0", "--num-partitions", "2",
                 flag, value]) == 2
    assert flag in capsys.readouterr().err


def test_server_pulls_replies_until_all_are_in():
    from fedfm.flower import nodes

    class HttpGrid:  # the deployment grid's name; replies arrive one per pull
        def __init__(self):
            self.pending = []

        def push_messages(self, msgs):
            self.pending = [f"m{i}" for i, _ in enumerate(msgs)]
            return list(self.pending)

        def pull_messages(self, ids):
            class Reply:
                class metadata:
                    reply_to_message_id = self.pending.pop(0)
            return [Reply()]

    t0 = time.monotonic()
    got = nodes.send_and_receive(HttpGrid(), [object()] * 3, timeout_s=30)
    assert len(got) == 3 and time.monotonic() - t0 < 2 * nodes.PULL_EVERY_S + 1.0
