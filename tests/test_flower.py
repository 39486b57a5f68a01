"""The Flower runtime (fedfm.flower): codec, ClientApp, parity with the embedded runtime, and a
loopback deployment (SuperLink + SuperNodes on 127.0.0.1, TLS + SuperNode authentication).

Parity = same config and seed -> the same final global tensors (max |diff| <= 1e-6; in practice
exactly equal) and the same non-timing metrics in every metrics.jsonl row, for every registered
algorithm. Default suite: through an in-process Grid (the whole fedfm-on-Flower path but Ray).
Slow: through Flower's real simulation engine (one Ray start shared by every algorithm) and
through the deployment engine.
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
import torch
from safetensors.torch import load_file

from fedfm.algorithms import registry
from fedfm.config import build_config
from fedfm.errors import ConfigError, PayloadError
from fedfm.run import run
from tests.conftest import tiny_raw

TIMING = ("peak_rss_mb",)


def parity_raw(algorithm: str, out: Path, **over) -> dict:
    """3 clients, 2 of them sampled per round, 2 rounds: exercises sampling and memory."""
    return tiny_raw(algorithm=algorithm, out=str(out), rounds=2,
                    **{"data.num_clients": 3, "sampling.fraction": 0.67, **over})


def assert_same_run(a: Path, b: Path) -> None:
    """Final global tensors within 1e-6 and identical non-timing metrics, row by row."""
    ta, tb = load_file(str(a / "final/global.safetensors")), load_file(str(b / "final/global.safetensors"))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert (ta[k] - tb[k]).abs().max().item() <= 1e-6, k
    rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):
        keys = {k for k in set(ra) | set(rb) if not k.endswith("_s") and k not in TIMING}
        # evaluation replies may carry timings in their JSON metrics (raffm: step_s_mean), so
        # their byte count may differ by the length of a float's digits
        assert abs((ra.get("bytes_eval") or 0) - (rb.get("bytes_eval") or 0)) <= 64
        keys.discard("bytes_eval")
        assert {k: ra.get(k) for k in keys} == {k: rb.get(k) for k in keys}
    assert rows_a[-1]["acc_personal_mean"] is not None and rows_a[-1]["bytes_up"] > 0


def test_missing_flower_names_the_extra(monkeypatch, tiny_cfg):
    from fedfm.flower import require_flwr

    monkeypatch.setitem(sys.modules, "flwr", None)  # import flwr -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'fedfm\[flower\]'"):
        require_flwr()
    with pytest.raises(ConfigError, match=r"fedfm\[flower\]"):
        run(tiny_cfg(runtime="flower"), quiet=True)


def test_flower_options_are_checked():
    with pytest.raises(ConfigError, match="flower.client_cpus"):
        build_config({"flower": {"client_cpus": 0}})
    with pytest.raises(ConfigError, match="Unknown config key 'flower.cpus'"):
        build_config({"flower": {"cpus": 1}})


flwr = pytest.importorskip("flwr")


def test_codec_roundtrips_blob_and_private_memory():
    from flwr.app import RecordDict

    from fedfm.algorithms.base import ClientMemory
    from fedfm.flower.codec import blob_of, info_of, load_memory, save_memory, to_content
    from fedfm.messages import ClientUpdate, decode, encode

    blob = encode(ClientUpdate(3, 1, 7, {"w": torch.arange(6.0).reshape(2, 3)}, {"loss": 0.5}))
    content = to_content(blob, {"compute_s": 1.25})
    assert blob_of(content) == blob and info_of(content) == {"compute_s": 1.25}
    assert torch.equal(decode(blob_of(content)).tensors["w"], torch.arange(6.0).reshape(2, 3))
    with pytest.raises(PayloadError, match="no fedfm payload"):
        blob_of(RecordDict())
    base = torch.randn(4, 3)
    mem = ClientMemory({"a": base, "view": base[:2], "h": torch.ones(2, dtype=torch.bfloat16)},
                       {"step": 3, "tags": ["x"]})  # shared storage + bf16 + JSON state
    state = RecordDict()
    assert load_memory(state).tensors == {}  # first round: empty memory
    save_memory(state, mem, "k")
    got = load_memory(state, "k")
    assert got.state == {"step": 3, "tags": ["x"]}
    assert all(torch.equal(got.tensors[k], mem.tensors[k]) for k in mem.tensors)
    assert got.tensors["h"].dtype == torch.bfloat16


def test_client_refuses_another_clients_task(tiny_cfg, tmp_path, monkeypatch):
    from flwr.app import Message

    from fedfm.flower.client import make_client_app
    from fedfm.flower.codec import to_content
    from fedfm.flower.inprocess import FIRST_NODE_ID, InProcessGrid
    from fedfm.messages import ClientTask, encode

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg()
    grid = InProcessGrid(make_client_app(cfg), 4)
    msg = Message(to_content(encode(ClientTask(0, 2))), dst_node_id=FIRST_NODE_ID,
                  message_type="train")  # node of client 0 gets client 2's task
    with pytest.raises(Exception, match="not its task"):
        grid.send_and_receive([msg])


def test_world_cache_rebuilds_the_same_world(tiny_cfg, tmp_path, monkeypatch):
    from fedfm.flower.cache import WORLDS, cache_dir, cached_world
    from fedfm.setup import build_world

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg()
    ref = build_world(cfg)
    cached_world(cfg)  # miss: builds and writes the file
    assert len(list(cache_dir().glob("*.safetensors"))) == 1
    WORLDS.clear()
    w = cached_world(cfg)  # hit: from disk
    sa, sb = ref.model.state_dict(), w.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for a, b in zip(ref.data.clients, w.data.clients):
        assert torch.equal(a.train.input_ids, b.train.input_ids)
        assert torch.equal(a.test.labels, b.test.labels)


@pytest.mark.parametrize("algorithm", registry.names())
def test_parity_in_process_grid(algorithm, tmp_path, monkeypatch):
    """Embedded vs fedfm-on-Flower (ClientApp + codec + context.state) for every algorithm."""
    from fedfm.flower.client import make_client_app
    from fedfm.flower.inprocess import InProcessGrid
    from fedfm.flower.strategy import FlowerClients, discover

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    emb = build_config(parity_raw(algorithm, tmp_path / "emb"))
    flw = build_config(parity_raw(algorithm, tmp_path / "flw"))
    run(emb, quiet=True)
    grid = InProcessGrid(make_client_app(flw), 3)
    nodes = discover(grid, 3, timeout_s=10)
    s = run(flw, quiet=True, transport=lambda w: FlowerClients.for_config(grid, nodes, flw))
    assert s["algorithm"] == algorithm
    assert_same_run(tmp_path / "emb", tmp_path / "flw")
    from fedfm.flower.app import RESUMABLE

    if algorithm in RESUMABLE:  # deployment --resume relies on it: no private client memory
        assert all(not c.state.array_records for c in grid.contexts.values())


def test_strategy_interface_matches_embedded(tmp_path, monkeypatch):
    """FedfmStrategy's Flower-style round (configure/aggregate train + evaluate) = embedded."""
    from flwr.app import ArrayRecord, ConfigRecord

    from fedfm.flower.client import make_client_app
    from fedfm.flower.inprocess import InProcessGrid
    from fedfm.flower.strategy import FedfmStrategy, discover
    from fedfm.setup import build_world
    from fedfm.sim.runner import EmbeddedRunner

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    raw = parity_raw("fedavg", tmp_path / "emb")
    raw["rounds"] = 1
    summary = run(build_config(raw), quiet=True)
    cfg = build_config({**raw, "out": str(tmp_path / "strategy")})
    world = build_world(cfg)
    world.algorithm.init_server(world.model)
    grid = InProcessGrid(make_client_app(cfg), 3)
    strategy = FedfmStrategy(EmbeddedRunner(world), discover(grid, 3, timeout_s=10))
    msgs = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    assert len(msgs) == 2  # one message per sampled client's node
    arrays, metrics = strategy.aggregate_train(1, grid.send_and_receive(msgs))
    assert metrics["accepted"] == 2
    want = load_file(str(tmp_path / "emb/final/global.safetensors"))
    got = arrays.to_torch_state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    ev = strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)
    res = strategy.aggregate_evaluate(1, grid.send_and_receive(ev))
    assert res["acc_personal_mean"] == pytest.approx(summary["acc_personal_mean"], abs=1e-12)


def test_strategy_start_runs_fedfm_rounds(tmp_path, monkeypatch):
    """FedfmStrategy.start (Flower's entry point) = the embedded run's rounds and tensors."""
    from fedfm.flower.client import make_client_app
    from fedfm.flower.inprocess import InProcessGrid
    from fedfm.flower.strategy import FedfmStrategy, discover
    from fedfm.setup import build_world
    from fedfm.sim.runner import EmbeddedRunner

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    run(build_config(parity_raw("fedper", tmp_path / "emb")), quiet=True)
    cfg = build_config(parity_raw("fedper", tmp_path / "strategy"))
    world = build_world(cfg)
    world.algorithm.init_server(world.model)
    grid = InProcessGrid(make_client_app(cfg), 3)
    strategy = FedfmStrategy(EmbeddedRunner(world), discover(grid, 3, timeout_s=10))
    result = strategy.start(grid)
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    want = load_file(str(tmp_path / "emb/final/global.safetensors"))
    got = result.arrays.to_torch_state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    rows = [json.loads(x) for x in (tmp_path / "emb/metrics.jsonl").read_text().splitlines()]
    assert strategy.rows[-1]["acc_personal_mean"] == rows[-1]["acc_personal_mean"]


@pytest.mark.slow
def test_parity_flower_simulation_engine(tmp_path, monkeypatch):
    """Every algorithm on Flower's simulation engine (Ray; started once for all of them)."""
    from fedfm.flower.simulation import run_many

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    names = registry.names()
    sims = run_many([build_config(parity_raw(a, tmp_path / f"flw_{a}", runtime="flower"))
                     for a in names])
    assert [s["runtime"] for s in sims] == ["flower"] * len(names)
    for a in names:
        run(build_config(parity_raw(a, tmp_path / f"emb_{a}")), quiet=True)
        assert_same_run(tmp_path / f"emb_{a}", tmp_path / f"flw_{a}")


# ---- loopback deployment: SuperLink + 2 SuperNodes, TLS, SuperNode authentication ---------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """Processes started by this test, each in its own session (stopped by process group)."""

    def __init__(self, root: Path):
        self.root, self.procs = root, []
        self.env = dict(os.environ, FLWR_HOME=str(root / "home"), FEDFM_CACHE=str(root / "cache"))

    def fedfm(self, *args: str, log: str | None = None, timeout: float = 120):
        cmd = [sys.executable, "-m", "fedfm.cli", "flower", *args]
        if log is None:
            return subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)
        p = subprocess.Popen(cmd, env=self.env, stdout=open(self.root / log, "w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in self.procs:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2 if sig == signal.SIGTERM else 0)


@pytest.mark.slow
def test_loopback_deployment_with_tls_and_auth(tmp_path):
    import tomli_w

    dep = Deployment(tmp_path)
    try:
        assert dep.fedfm("certs", str(tmp_path / "certs")).returncode == 0
        for name in ("n0", "n1", "intruder"):
            assert dep.fedfm("keys", str(tmp_path / "keys"), name).returncode == 0
        link = f"127.0.0.1:{_free_port()}"
        tls = ["--superlink", link, "--ca", str(tmp_path / "certs/ca.crt")]
        dep.fedfm("superlink", "--port", link.split(":")[1], "--certs", str(tmp_path / "certs"),
                  "--auth", log="superlink.log")
        for name in ("n0", "n1"):  # register the two SuperNodes (retry while the link starts)
            for _ in range(30):
                r = dep.fedfm("register", str(tmp_path / f"keys/{name}.pub"), *tls)
                if r.returncode == 0:
                    break
                time.sleep(1)
            assert r.returncode == 0, r.stdout + r.stderr
        for i in range(2):
            dep.fedfm("supernode", "--partition", str(i), "--num-partitions", "2", "--port",
                      str(_free_port()), *tls, "--key", str(tmp_path / f"keys/n{i}"),
                      log=f"supernode{i}.log")
        intruder = dep.fedfm("supernode", "--partition", "0", "--num-partitions", "2", "--port",
                             str(_free_port()), *tls, "--key", str(tmp_path / "keys/intruder"),
                             log="intruder.log")
        cfg = tmp_path / "run.toml"
        cfg.write_text(tomli_w.dumps(tiny_raw(out=str(tmp_path / "run"), rounds=2, **{
            "data.num_clients": 2, "eval.every": 2})))
        r = dep.fedfm("run", str(cfg), *tls, "--stream", timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        summary = json.loads((tmp_path / "run/summary.json").read_text())
        assert summary["rounds"] == 2 and summary["runtime"] == "embedded"  # config as written
        rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
        assert [row["round"] for row in rows] == [1, 2] and rows[1]["clients"] == 2
        assert rows[0]["bytes_up"] > 0 and [r["rejected"] for r in rows] == [0, 0]
        # the unregistered SuperNode is refused at activation and exits with an error
        assert intruder.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "intruder.log").read_text()
    finally:
        dep.stop()
