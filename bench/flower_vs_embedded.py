"""Embedded runtime vs Flower, the same run side by side (issue #6).

One process runs the same config (FedAvg-LoRA on real all-MiniLM-L6-v2 + BBC) several ways
(--variants, in this order):
  embedded      fedfm's loop, clients in this process one after another, torch threads = cores
  embedded-t1   the same with train.threads = 1
  flower-inproc fedfm's loop + the Flower ClientApp/codec/context.state path, no Ray (InProcessGrid)
  flower-sim    `runtime=flower`: Flower's simulation engine, 1 CPU per client (2 clients at once
                on 2 cores, one torch thread each)
  flower-sim-c2 the same with flower.client_cpus = 2: one client at a time on 2 threads, i.e. the
                embedded run's compute layout, so the difference is Flower's own cost
  embedded-2    the embedded run again (brackets the shared machine's drift)
  flower-sim-t1, flower-sim-t1-c2, embedded-t1-2: the same with train.threads = 1 everywhere
                (c2: one client at a time, exactly embedded-t1's compute layout)
The first embedded pair present (embedded/embedded-2, else embedded-t1/embedded-t1-2) is the
baseline of the ratios.
and writes bench/reports/flower[-TAG].json + .png. Final global tensors are compared too.

  python bench/flower_vs_embedded.py [--rounds 2] [--clients 4] [--max-examples 200] [--tag T]
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
TRAIN = {"batch_size": 16, "lr": 1e-3, "head_lr": 5e-3, "precision": "bf16"}


def config(args, out: str, **over):
    raw = {
        "algorithm": "fedavg", "rounds": args.rounds, "seed": 0, "out": out, "overwrite": True,
        "model": {"name": "minilm-l6", "max_length": 64, "lora_rank": 8},
        "data": {"name": "bbc", "num_clients": args.clients, "max_examples": args.max_examples,
                 "partition": "dirichlet", "alpha": 0.5},
        "train": {**TRAIN, "max_steps": args.max_steps},
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
            "bytes_down": s["bytes_down"]}


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
    p.add_argument("--variants", default="embedded,flower-inproc,flower-sim,embedded-2")
    p.add_argument("--tag", default="", help="suffix of the report files")
    args = p.parse_args()
    os.environ.setdefault("FEDFM_CACHE", f"{args.out}/cache")
    o = args.out
    t1 = {**TRAIN, "max_steps": args.max_steps, "threads": 1}  # one torch thread per client
    variants = {
        "embedded": lambda: run(config(args, f"{o}/embedded"), quiet=True),
        "embedded-t1": lambda: run(config(args, f"{o}/embedded-t1", train=t1), quiet=True),
        "flower-inproc": lambda: inproc(config(args, f"{o}/flower-inproc")),
        "flower-sim": lambda: run(config(args, f"{o}/flower-sim", runtime="flower"), quiet=True),
        "flower-sim-c2": lambda: run(config(args, f"{o}/flower-sim-c2", runtime="flower",
                                            flower={"client_cpus": 2.0}), quiet=True),
        "embedded-2": lambda: run(config(args, f"{o}/embedded-2"), quiet=True),
        "embedded-t1-2": lambda: run(config(args, f"{o}/embedded-t1-2", train=t1), quiet=True),
        "flower-sim-t1": lambda: run(config(args, f"{o}/flower-sim-t1", runtime="flower",
                                            train=t1), quiet=True),
        "flower-sim-t1-c2": lambda: run(config(args, f"{o}/flower-sim-t1-c2", runtime="flower",
                                               train=t1, flower={"client_cpus": 2.0}), quiet=True),
    }
    results = [timed(v, variants[v]) for v in args.variants.split(",")]
    by = {r["name"]: r for r in results}
    base = [by[n] for n in ("embedded", "embedded-2") if n in by] or [
        by[n] for n in ("embedded-t1", "embedded-t1-2") if n in by]
    wall = sum(r["wall_s"] for r in base) / len(base)
    rounds = sum(r["round_wall_s"] for r in base) / len(base)
    report = {"command": " ".join(["python", *sys.argv]), "cores": os.cpu_count(),
              "torch_threads_embedded": torch.get_num_threads(), "results": results}
    for r in results:
        if r not in base:
            n = r["name"]
            report[f"ratio_wall_{n}_vs_embedded"] = round(r["wall_s"] / wall, 2)
            report[f"ratio_rounds_{n}_vs_embedded"] = round(r["round_wall_s"] / rounds, 2)
            report[f"max_abs_diff_{n}_vs_embedded"] = max_diff(f"{o}/{base[0]['name']}", f"{o}/{n}")
    out = HERE / "reports"
    out.mkdir(exist_ok=True)
    stem = "flower" + (f"-{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    plot(results, out / f"{stem}.png")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
