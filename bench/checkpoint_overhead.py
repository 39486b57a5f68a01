"""What the default-on checkpoint costs: time inside Checkpointer.save next to each round's
wall time, measured in the same run (a ratio that survives a loaded machine), and the size of
the checkpoint file.

  python bench/checkpoint_overhead.py configs/demo.toml rounds=2 data.max_examples=400 ...
  python bench/checkpoint_overhead.py - algorithm=fedper model.name=tiny-bert \
      data.name=synthetic data.num_clients=1000 data.synthetic_size=8000 ...

`-` instead of a config file starts from the defaults.

  python bench/checkpoint_overhead.py --state CLIENTS KB_PER_CLIENT [SERVER_MB]

times Checkpointer.save alone on a stub runner whose store holds CLIENTS memories of
KB_PER_CLIENT each (real private-state sizes without training 1,000 real models: FedPer's
MiniLM head ~7.7 KB, FedMS's MiniLM local expert LoRA r=8 ~300 KB). Prints one JSON line per round and a
summary line: save seconds, round seconds, overhead = save / round, checkpoint MB, clients with
private state in the checkpoint.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from fedfm.config import apply_overrides, build_config, read_toml
from fedfm.run import run
from fedfm.sim import checkpoint


def main(argv: list[str]) -> dict:
    path, overrides = argv[0], argv[1:]
    raw = {} if path == "-" else read_toml(Path(path), "Config file")
    out = tempfile.mkdtemp(prefix="ckpt-bench-")
    raw = apply_overrides(raw, overrides + [f"out={json.dumps(out)}", "overwrite=true",
                                            "checkpoint.enabled=true"])
    cfg = build_config(raw)
    saves: list[float] = []
    real_save = checkpoint.Checkpointer.save

    def timed_save(self, rnd, runner, rows):
        t0 = time.perf_counter()
        result = real_save(self, rnd, runner, rows)
        saves.append(time.perf_counter() - t0)
        return result

    checkpoint.Checkpointer.save = timed_save
    try:
        run(cfg, quiet=True)
    finally:
        checkpoint.Checkpointer.save = real_save
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    for r, s in zip(rows, saves):
        # round time as the user sees it: training + evaluation of that round
        wall = r["round_wall_s"] + (r.get("eval_wall_s") or 0.0)
        print(json.dumps({"round": r["round"], "round_s": round(wall, 3), "save_s": round(s, 4),
                          "overhead": round(s / wall, 5)}))
    files = sorted((Path(out) / "checkpoint").glob("round-*.safetensors"))
    meta = checkpoint.Checkpointer(out, cfg).read()["meta"]
    total_round = sum(r["round_wall_s"] + (r.get("eval_wall_s") or 0.0) for r in rows)
    summary = {"config": path, "overrides": overrides, "rounds": len(rows),
               "save_s_total": round(sum(saves), 3), "round_s_total": round(total_round, 2),
               "overhead": round(sum(saves) / total_round, 5),
               "checkpoint_mb": round(files[-1].stat().st_size / 2**20, 2),
               "clients_in_checkpoint": len(meta["clients"]), "files_kept": len(files)}
    print(json.dumps(summary))
    return summary


def state_only(clients: int, kb: float, server_mb: float = 1.0) -> dict:
    """Time one save of a stub runner holding `clients` private memories of `kb` KiB each."""
    from types import SimpleNamespace

    import torch

    from fedfm.algorithms.base import ClientMemory
    from fedfm.sim.store import ClientStore

    cfg = build_config({"out": tempfile.mkdtemp(prefix="ckpt-state-")})
    store = ClientStore.from_config(cfg.sim)
    for cid in range(clients):
        store.put(cid, ClientMemory({"private": torch.randn(int(kb * 256))}, {"steps": cid}))
    server = {"global": torch.randn(int(server_mb * 2**18))}
    runner = SimpleNamespace(algo=SimpleNamespace(server_state=lambda: (server, {})),
                             store=store, inbox=SimpleNamespace(pending=[]), client_metrics={})
    ck = checkpoint.Checkpointer(cfg.out, cfg)
    times = []
    for rnd in (1, 2, 3):
        t0 = time.perf_counter()
        path = ck.save(rnd, runner, [])
        times.append(time.perf_counter() - t0)
    out = {"clients": clients, "kb_per_client": kb, "server_mb": server_mb,
           "save_s_median": round(sorted(times)[1], 3),
           "checkpoint_mb": round(path.stat().st_size / 2**20, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--state":
        state_only(int(sys.argv[2]), float(sys.argv[3]), *map(float, sys.argv[4:5]))
    else:
        main(sys.argv[1:])
