"""Small PNGs for bench/reports/performance.md from the benchmarks' JSON files.

  python bench/plot_performance.py     (reads bench/reports/{performance_accuracy,client_memory,step_throughput}.json)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPORTS = Path(__file__).resolve().parent / "reports"


def _load(name: str) -> dict | None:
    p = REPORTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def plot_memory(d: dict) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for mode in ("ram", "spill"):
        if mode not in d:
            continue
        pts = d[mode]["points"]
        ax.plot([p["clients"] for p in pts], [p["RssAnon"] for p in pts], "o-",
                label=f"{mode} ({d[mode]['RssAnon_ratio_to_private']:.2f}x private / client)")
        ax.plot([p["clients"] for p in pts], [p["store_mb"] for p in pts], ":", color="grey")
    ax.set_xlabel("virtual clients with private state")
    ax.set_ylabel("process RssAnon (MiB)")
    ax.set_title("memory per added client (dotted: private tensors)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(REPORTS / "performance_memory.png", dpi=110)


def plot_comm(d: dict) -> None:
    """d = {"seed0": {variant: summary}, "seed1": {...}} (performance_accuracy.json)."""
    labels = ["bf16prec_fp32comm", "bf16prec_bf16comm", "bf16prec_int8comm"]
    base = d["seed0"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    mb = [base[k]["bytes_up"] / 2**20 for k in labels]
    ax.bar([k.split("_")[1] for k in labels], mb, color="tab:blue")
    for i, k in enumerate(labels):
        accs = " / ".join(f"{d[s][k]['acc_global']:.3f}" for s in d if k in d[s])
        ax.text(i, mb[i], f"acc {accs}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("bytes up, whole run (MiB)")
    ax.set_title("comm.dtype (bf16 training): bytes and global accuracy per seed", fontsize=9)
    fig.tight_layout()
    fig.savefig(REPORTS / "performance_comm.png", dpi=110)


def plot_steps(d: dict) -> None:
    """GFLOP/s by CPU time at 1 thread (robust on a shared machine) against the CPU-time peaks."""
    labels = [k for k in ("fp32", "bf16-attention-in-bf16", "bf16", "bf16+frozen-bf16") if k in d]
    names = {"fp32": "fp32", "bf16-attention-in-bf16": "bf16\n(before)", "bf16": "bf16\n(now)",
             "bf16+frozen-bf16": "bf16 +\nfrozen bf16"}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([names[k] for k in labels], [d[k]["flops"] / d[k]["step_cpu_s"] / 1e9 for k in labels],
           color="tab:green")
    peak = d["peak_gflops"]
    ax.axhline(peak["bf16_cpu_time"], color="red", ls="--", label="bf16 matmul peak")
    ax.axhline(peak["bf16_cpu_time"] / 2, color="red", ls=":", label="50% of bf16 peak")
    ax.axhline(peak["fp32_cpu_time"], color="grey", ls="--", label="fp32 matmul peak")
    ax.set_ylabel("GFLOP/s (matmul FLOPs / CPU s)")
    ax.set_title(f"MiniLM-L6 LoRA step, {d['batch']} x {d['seq']} tokens, "
                 f"{d['threads']} thread", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(REPORTS / "performance_step.png", dpi=110)


def main() -> None:
    for name, fn in (("client_memory", plot_memory), ("performance_accuracy", plot_comm),
                     ("step_throughput", plot_steps)):
        d = _load(name)
        if d is not None:
            fn(d)
            print("wrote", name)


if __name__ == "__main__":
    main()
