"""Resource-aware methods side by side on real all-MiniLM-L6-v2 + BBC at the same tiers (#15):
RaFFM, HeteroFL (budget-sized subnetworks, full fine-tuning), HetLoRA, FlexLoRA, FLoRA
(budget-sized LoRA ranks) and full-model FedAvg (every client trains everything).

  python bench/hetero_bench.py train ALGO      # ALGO in METHODS; start them together
  python bench/hetero_bench.py export ALGO     # 50% export of raffm / heterofl / fedavg-full
  python bench/hetero_bench.py report          # bench/reports/hetero.json + the table (stdout)

CPU-sized (2 shared cores): 10 clients (tiers 30/40/30 % at budgets 0.3/0.6/1.0), all
sampled, 3 rounds, BBC capped at 600 articles (120 pooled test), at most 3 local steps of 16 examples per client and round, max_length 64.
LoRA ranks: round(8 · budget) = 2 / 5 / 8 (lora_rank 8 is the largest).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench_hetero"
OUT = ROOT / "bench" / "reports" / "hetero.json"

COMMON = {
    "rounds": 3, "seed": 0,
    "model": {"name": "minilm-l6", "max_length": 64, "lora_rank": 8, "lora_alpha": 16},
    "data": {"name": "bbc", "partition": "dirichlet", "alpha": 0.5, "num_clients": 10,
             "max_examples": 600},
    "sampling": {"fraction": 1.0},
    "train": {"batch_size": 16, "lr": 1e-3, "head_lr": 5e-3, "precision": "bf16", "threads": 1,
              "max_steps": 3},
    "resources": {"unit": "params", "tiers": {"small": 0.3, "medium": 0.6, "large": 1.0},
                  "proportions": {"small": 0.3, "medium": 0.4, "large": 0.3}},
    "checkpoint": {"enabled": False},
}
FULL = {"model": {"finetune": "full"}, "train": {"lr": 1e-4}}  # 22.7 M weights: 10x lower lr
METHODS = {"raffm": FULL, "heterofl": FULL, "fedavg-full": FULL,
           "hetlora": {}, "flexlora": {}, "flora": {}}


def merge(a: dict, b: dict) -> dict:
    out = json.loads(json.dumps(a))
    for k, v in b.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def train(label: str) -> None:
    from fedfm.config import build_config
    from fedfm.run import run

    raw = merge(COMMON, METHODS[label])
    raw.update(algorithm=label.split("-")[0], out=str(RUNS / label), overwrite=True)
    s = run(build_config(raw), quiet=True)
    print(json.dumps({k: s.get(k) for k in ("algorithm", "acc_global", "bytes_up", "bytes_down",
                                            "client_compute_s", "round_wall_s")}))


def export(label: str) -> None:
    from fedfm.export.budget import export as cut

    rep = cut(RUNS / label, 0.5, RUNS / f"{label}-export50", overwrite=True, threads=1)
    print(json.dumps(rep))


def tier_rows(summary: dict) -> dict:
    """Per tier: mean step time, bytes, trained size (params or LoRA params), personal acc."""
    rows: dict = {}
    for c in summary.get("clients", []):
        t = c.get("tier", "all")
        r = rows.setdefault(t, {"n": 0, "step_s": [], "sent": 0, "received": 0, "acc": []})
        r["n"] += 1
        if c.get("step_s_mean") is not None:
            r["step_s"].append(c["step_s_mean"])
        r["sent"] += c.get("bytes_sent", 0)
        r["received"] += c.get("bytes_received", 0)
        r["acc"].append(c.get("acc_personal"))
        r["size"] = c.get("sub_params") or c.get("lora_params")
        r["rank"] = c.get("rank")
    for r in rows.values():
        r["step_s"] = sum(r["step_s"]) / len(r["step_s"]) if r["step_s"] else None
        accs = [a for a in r["acc"] if a is not None]
        r["acc"] = sum(accs) / len(accs) if accs else None
    return rows


def report() -> None:
    out = {}
    for label in METHODS:
        f = RUNS / label / "summary.json"
        if not f.is_file():
            continue
        s = json.loads(f.read_text())
        rows = [json.loads(x) for x in (RUNS / label / "metrics.jsonl").read_text().splitlines()]
        out[label] = {"acc_global_by_round": [r.get("acc_global") for r in rows],
                      "acc_personal_mean": s["acc_personal_mean"], "bytes_up": s["bytes_up"],
                      "bytes_down": s["bytes_down"], "client_compute_s": s["client_compute_s"],
                      "peak_rss_mb": s.get("peak_rss_mb"), "tiers": tier_rows(s)}
        exp = RUNS / f"{label}-export50" / "fedfm_export.json"
        if exp.is_file():
            e = json.loads(exp.read_text())
            out[label]["export50"] = {k: e.get(k) for k in (
                "params_fraction", "acc_export", "acc_full", "speedup",
                "latency_ms_per_example", "latency_ms_per_example_full")}
    OUT.write_text(json.dumps(out, indent=2))
    print("| method | global acc by round | personal acc | MB up | MB down | small tier: step s | "
          "small tier: trained params |")
    print("|---|---|---|---|---|---|---|")
    for label, r in out.items():
        small = r["tiers"].get("small", {})
        accs = ", ".join(f"{a:.3f}" for a in r["acc_global_by_round"] if a is not None)
        step = f"{small['step_s']:.3f}" if small.get("step_s") else "n/a"
        print(f"| {label} | {accs} | {r['acc_personal_mean']:.3f} | {r['bytes_up'] / 1e6:.1f} | "
              f"{r['bytes_down'] / 1e6:.1f} | {step} | {small.get('size') or 'n/a'} |")


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {"train": train, "export": export, "report": lambda: report()}[cmd](*rest)
