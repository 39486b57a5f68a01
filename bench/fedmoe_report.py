"""Figures and plots for bench/reports/fedmoe.md from a bench/fedmoe_bbc.sh output folder.

    python bench/fedmoe_report.py runs/bench_fedmoe [PNG_PREFIX]
Prints a markdown table (accuracy, bytes, client memory, time) and writes
PNG_PREFIX_accuracy.png and PNG_PREFIX_clients.png (default bench/reports/fedmoe).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ALGOS = ("fedmoe", "randommoe", "fedavg", "local")
MiB = 2**20


def load(run: Path) -> tuple[dict, list[dict]]:
    s = json.loads((run / "summary.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return s, rows


def table(runs: dict[str, tuple[dict, list[dict]]]) -> str:
    out = ["| algorithm | acc_personal_mean | MB up+down / round | client memory MB (min-mean-max) "
           "| experts held (min-mean-max of 48) | wall s |", "|---|---|---|---|---|---|"]
    for name, (s, rows) in runs.items():
        per_round = (s["bytes_up"] + s["bytes_down"]) / len(rows) / MiB
        mem = [c["memory_mb"] for c in s["clients"] if "memory_mb" in c]
        exp = [c["experts"] for c in s["clients"] if "experts" in c]
        fmt = (lambda v: f"{min(v):.1f} / {sum(v) / len(v):.1f} / {max(v):.1f}") if mem else None
        out.append(f"| {name} | {s['acc_personal_mean']:.3f} | {per_round:.2f} | "
                   f"{fmt(mem) if mem else 'dense'} | "
                   f"{f'{min(exp)} / {sum(exp) / len(exp):.1f} / {max(exp)}' if exp else '-'} | "
                   f"{s.get('wall_s', s['round_wall_s']):.0f} |")
    return "\n".join(out)


def plots(runs, prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for name, (_, rows) in runs.items():
        pts = [(r["round"], r["acc_personal_mean"]) for r in rows if r.get("acc_personal_mean") is not None]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("round"), ax.set_ylabel("personalised accuracy"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(f"{prefix}_accuracy.png"), plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for name in ("fedmoe", "randommoe"):
        if name in runs:
            cs = runs[name][0]["clients"]
            ax.scatter([c["memory_mb"] for c in cs], [c["acc_personal"] for c in cs], label=name)
    ax.set_xlabel("client training memory of its sub-MoE (MiB)"), ax.set_ylabel("client accuracy")
    ax.legend(), ax.grid(alpha=0.3), fig.tight_layout(), fig.savefig(f"{prefix}_clients.png")
    plt.close(fig)


def main() -> None:
    root = Path(sys.argv[1])
    prefix = sys.argv[2] if len(sys.argv) > 2 else "bench/reports/fedmoe"
    runs = {a: load(root / a) for a in ALGOS if (root / a / "summary.json").is_file()}
    print(table(runs))
    for name, (s, _) in runs.items():
        print(name, "per client:", [(c["id"], round(c["acc_personal"], 3), c.get("experts"),
                                     c.get("memory_mb")) for c in s["clients"]])
    try:
        plots(runs, prefix)
    except Exception as e:  # plotting is optional (no matplotlib)
        print("no plots:", e)


if __name__ == "__main__":
    main()
