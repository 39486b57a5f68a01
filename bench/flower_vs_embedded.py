"""Embedded runtime vs Flower, the same run side by side (issue #6).

One process runs the same config (FedAvg-LoRA on real all-MiniLM-L6-v2 + BBC) four ways:
  embedded      fedfm's loop, clients in this process, one after another
  flower-inproc fedfm's loop + the Flower ClientApp/codec/context.state path, no Ray (InProcessGrid)
  flower-sim    `runtime=flower`: Flower's simulation engine (Ray actors, flower.client_cpus each)
  embedded-2    the embedded run again (brackets the shared machine's drift)
and writes bench/reports/flower.json + flower.png. Final global tensors are compared too.

  python bench/flower_vs_embedded.py [--rounds 3] [--clients 4] [--max-examples 400]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedfm.config import build_config
from fedfm.run import run

HERE = Path(__file__).parent


def config(args, out: str, **over):
    raw = {
        "algorithm": "fedavg", "rounds": args.rounds, "seed": 0, "out": out, "overwrite": True,
        "model": {"name": "minilm-l6", "max_length": 64, "lora_rank": 8},
        "data": {"name": "bbc", "num_clients": args.clients, "max_examples": args.max_examples,
                 "partition": "dirichlet", "alpha": 0.5},
        "train": {"batch_size": 16, "lr": 1e-3, "head_lr": 5e-3, "precision": "bf16",
                  "max_steps": args.max_steps},
        "flower": {"client_cpus": 1.0},
    }
    raw.update(over)
    return build_config(raw)


def timed(name: str, fn) -> dict:
    t0 = time.perf_counter()
    s = fn()
    wall = time.perf_counter() - t0
    print(f"{name:14s} wall {wall:7.1f} s  rounds {s['round_wall_s']:7.1f} s  "
          f"acc_global {s['acc_global']}", flush=True)
    return {"name": name, "wall_s": round(wall, 2), "round_wall_s": round(s["round_wall_s"], 2),
            "client_compute_s": round(s["client_compute_s"], 2),
            "eval_wall_s": round(s["eval_wall_s"], 2), "acc_global": s["acc_global"],
            "acc_personal_mean": s["acc_personal_mean"], "bytes_up": s["bytes_up"],
            "bytes_down": s["bytes_down"], "out": s.get("out")}


def inproc(cfg):
    from fedfm.flower.client import make_client_app
    from fedfm.flower.inprocess import InProcessGrid
    from fedfm.flower.strategy import FlowerClients, discover

    grid = InProcessGrid(make_client_app(cfg), cfg.data.num_clients)
    nodes = discover(grid, cfg.data.num_clients, 30)
    return run(cfg, quiet=True, transport=lambda w: FlowerClients.for_config(grid, nodes, cfg))


def max_diff(a: str, b: str) -> float:
    ta, tb = load_file(f"{a}/final/global.safetensors"), load_file(f"{b}/final/global.safetensors")
    return max((ta[k] - tb[k]).abs().max().item() for k in ta)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    rounds = [r["round_wall_s"] + r["eval_wall_s"] for r in results]
    other = [r["wall_s"] - x for r, x in zip(results, rounds)]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(names, rounds, label="rounds + evaluation")
    ax.barh(names, other, left=rounds, label="setup / engine start / teardown")
    ax.set_xlabel("wall time (s), 2-core CPU, same run")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-examples", type=int, default=400)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--out", default="runs/bench_flower")
    args = p.parse_args()
    os.environ.setdefault("FEDFM_CACHE", f"{args.out}/cache")
    o = args.out
    results = [
        timed("embedded", lambda: run(config(args, f"{o}/embedded"), quiet=True)),
        timed("flower-inproc", lambda: inproc(config(args, f"{o}/inproc"))),
        timed("flower-sim", lambda: run(config(args, f"{o}/sim", runtime="flower"), quiet=True)),
        timed("embedded-2", lambda: run(config(args, f"{o}/embedded2"), quiet=True)),
    ]
    base = (results[0]["wall_s"] + results[3]["wall_s"]) / 2
    base_rounds = (results[0]["round_wall_s"] + results[3]["round_wall_s"]) / 2
    report = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "results": results,
        "ratio_wall_sim_vs_embedded": round(results[2]["wall_s"] / base, 2),
        "ratio_rounds_sim_vs_embedded": round(results[2]["round_wall_s"] / base_rounds, 2),
        "ratio_wall_inproc_vs_embedded": round(results[1]["wall_s"] / base, 2),
        "max_abs_diff_sim_vs_embedded": max_diff(f"{o}/embedded", f"{o}/sim"),
        "max_abs_diff_inproc_vs_embedded": max_diff(f"{o}/embedded", f"{o}/inproc"),
    }
    out = HERE / "reports"
    out.mkdir(exist_ok=True)
    (out / "flower.json").write_text(json.dumps(report, indent=2))
    plot(results, out / "flower.png")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
