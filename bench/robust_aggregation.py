"""Reliability benchmark on real all-MiniLM-L6-v2 + BBC News: Byzantine clients vs. aggregation
rules, 30% dropouts, DP-FedAvg, and the cost of validation/checkpointing — side by side, one
process per invocation, same seed and same data for every cell.

Cells (name: what runs):
  clean           FedAvg, no attack                         (the reference)
  fedavg_scale    FedAvg, clients {0,1,2} upload θ_t - 10·(θ - θ_t)
  fedavg_random   FedAvg, clients {0,1,2} upload θ_t + N(0, 1)
  fedavg_nan      FedAvg, clients {0,1,2} upload a NaN: validation rejects them, so this is
                  FedAvg over the 7 honest clients — what a perfect defence could reach
  median_clean    coordinate median, no attack (the robust rule's own cost)
  median_scale / trimmed_scale / krum_scale / multikrum_scale / median_random / multikrum_random
  dropout30       FedAvg, availability.drop_prob = 0.3
  dp              DP-FedAvg, clip 0.5, σ = 0.5

  python bench/robust_aggregation.py CELL [CELL ...] [--out bench/reports/reliability_runs.jsonl]
  python bench/robust_aggregation.py --plot            # table + PNG from the collected runs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"
BASE = {  # shrunk to fit a loaded 2-core box: the real first 2 layers of MiniLM-L6, 3 rounds
    "algorithm": "fedavg", "rounds": 3, "seed": 0,
    "model": {"name": "minilm-l6", "num_layers": 2, "max_length": 64, "lora_rank": 8},
    "data": {"name": "bbc", "partition": "dirichlet", "alpha": 1.0, "num_clients": 10,
             "max_examples": 500},
    "train": {"batch_size": 16, "lr": 2e-3, "head_lr": 1e-2, "max_steps": 3,
              "precision": "bf16", "threads": 2},
    "eval": {"every": 1, "batch_size": 64},
}
ROBUST = {"aggregation.byzantine": 3, "aggregation.trim_fraction": 0.3}
CELLS = {
    "clean": ({}, None),
    "fedavg_scale": ({}, "scale"),
    "fedavg_random": ({}, "random"),
    "fedavg_nan": ({}, "nan"),
    "median_clean": ({"aggregation.method": "median", **ROBUST}, None),
    "median_scale": ({"aggregation.method": "median", **ROBUST}, "scale"),
    "trimmed_scale": ({"aggregation.method": "trimmed_mean", **ROBUST}, "scale"),
    "krum_scale": ({"aggregation.method": "krum", **ROBUST}, "scale"),
    "multikrum_scale": ({"aggregation.method": "multi_krum", **ROBUST}, "scale"),
    "median_random": ({"aggregation.method": "median", **ROBUST}, "random"),
    "multikrum_random": ({"aggregation.method": "multi_krum", **ROBUST}, "random"),
    "dropout30": ({"availability.drop_prob": 0.3}, None),
    "dp": ({"dp.enabled": True, "dp.clip": 0.5, "dp.noise_multiplier": 0.5}, None),
}
ATTACKERS = {0, 1, 2}


def config(overrides: dict):
    from fedfm.config import apply_overrides, build_config

    raw = json.loads(json.dumps(BASE))
    return build_config(apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in
                                              overrides.items()]))


def run_cell(name: str) -> dict:
    from fedfm.sim.attacks import run_attacked

    overrides, kind = CELLS[name]
    cfg = config(overrides)
    t0 = time.perf_counter()
    rows, _ = run_attacked(cfg, ATTACKERS if kind else set(), kind or "scale")
    return {"cell": name, "overrides": overrides, "attack": kind,
            "attackers": sorted(ATTACKERS) if kind else [], "wall_s": time.perf_counter() - t0,
            "acc_global": [r["acc_global"] for r in rows],
            "train_round_s": [r["round_wall_s"] for r in rows],
            "rejected": [r["rejected"] for r in rows],
            "dropped": [r.get("dropped") for r in rows],
            "agg_selected": [r.get("agg_selected") for r in rows],
            "dp_epsilon": [r.get("dp_epsilon") for r in rows]}


def plot(runs_file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for line in runs_file.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            runs[r["cell"]] = r  # the last run of a cell wins
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in runs.items():
        ax.plot(range(1, len(r["acc_global"]) + 1), r["acc_global"], marker="o", label=name,
                linestyle="-" if r["attack"] is None else "--")
    ax.set_xlabel("round"), ax.set_ylabel("global accuracy (BBC test)")
    ax.set_title("MiniLM-L6 LoRA, BBC, 10 clients, 3 attackers (dashed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(REPORTS / "reliability_accuracy.png", dpi=90)
    clean = runs.get("clean", {}).get("acc_global", [None])[-1]
    print("| cell | final acc | Δ vs clean (points) | wall s | notes |\n|---|---|---|---|---|")
    for name, r in runs.items():
        acc = r["acc_global"][-1]
        delta = f"{100 * (acc - clean):+.1f}" if clean is not None else ""
        note = ""
        if r["dp_epsilon"][-1] is not None:
            note = f"ε = {r['dp_epsilon'][-1]:.2f} (δ = 1e-5)"
        if r["agg_selected"][-1]:
            note = f"selected {r['agg_selected'][-1]}"
        if r["dropped"][0] is not None:
            note = f"dropped {r['dropped']}"
        print(f"| {name} | {acc:.3f} | {delta} | {r['wall_s']:.0f} | {note} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cells", nargs="*", help=f"any of: {', '.join(CELLS)}")
    p.add_argument("--out", default=str(REPORTS / "reliability_runs.jsonl"))
    p.add_argument("--plot", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny-bert + synthetic (seconds)")
    args = p.parse_args()
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        p.error(f"unknown cells {unknown}; valid: {', '.join(CELLS)}")
    if args.smoke:
        BASE.update(model={"name": "tiny-bert", "max_length": 16, "lora_rank": 4},
                    data={"name": "synthetic", "num_clients": 10}, rounds=2)
    logging.basicConfig(level=logging.ERROR)
    out = Path(args.out)
    for name in args.cells:
        result = run_cell(name)
        with out.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        print(name, [round(a, 3) for a in result["acc_global"]], f"{result['wall_s']:.0f}s",
              flush=True)
    if args.plot:
        plot(out)


if __name__ == "__main__":
    sys.exit(main())
