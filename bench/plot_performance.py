"""Small PNGs for bench/reports/performance.md from the benchmarks' JSON files.

  python bench/plot_performance.py     (reads bench/reports/{comm,precision,client_memory,step_throughput}.json)
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
    res = d["results"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    labels = list(res)
    mb = [res[k]["bytes_up"] / 2**20 for k in labels]
    ax.bar(labels, mb, color="tab:blue")
    for i, k in enumerate(labels):
        ax.text(i, mb[i], f"acc {res[k]['acc_global']:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("bytes up, whole run (MiB)")
    ax.set_title("comm.dtype on the demo: bytes and global accuracy", fontsize=9)
    fig.tight_layout()
    fig.savefig(REPORTS / "performance_comm.png", dpi=110)


def plot_steps(d: dict) -> None:
    labels = [k for k in ("fp32", "bf16", "bf16+frozen-bf16") if k in d]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(labels, [d[k]["gflops"] for k in labels], color="tab:green")
    ax.axhline(d["peak_gflops"]["bf16"], color="red", ls="--", label="bf16 matmul peak")
    ax.axhline(d["peak_gflops"]["bf16"] / 2, color="red", ls=":", label="50% of peak")
    ax.axhline(d["peak_gflops"]["fp32"], color="grey", ls="--", label="fp32 matmul peak")
    ax.set_ylabel("GFLOP/s (matmul FLOPs / step time)")
    ax.set_title(f"MiniLM-L6 LoRA step, batch {d['batch']} x {d['seq']} tokens", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(REPORTS / "performance_step.png", dpi=110)


def main() -> None:
    for name, fn in (("client_memory", plot_memory), ("comm", plot_comm),
                     ("step_throughput", plot_steps)):
        d = _load(name)
        if d is not None:
            fn(d)
            print("wrote", name)


if __name__ == "__main__":
    main()
