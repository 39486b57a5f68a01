"""Plots + a markdown table for the FedMS benchmark (bench/fedms_bbc.sh, bench/sal_step.py).

  python bench/fedms_plot.py runs/bench_fedms [--sal bench/reports/fedms_sal_step.json]
Writes bench/reports/fedms_bbc.png, fedms_clients.png, fedms_sal_step.png (when the JSON exists)
and prints the table rows for bench/reports/fedms.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench/reports"
ALGOS = ("fedms", "fedms_g", "fedavg", "local")  # fedms_g: global_in_stage2 + local CE
REQUIRED = {"fedms", "fedavg", "local"}


def load(run: Path):
    rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
    return rows, json.loads((run / "summary.json").read_text())


def plot_rounds(runs: dict, out: Path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for name, (rows, _) in runs.items():
        pts = [(r["round"], r["acc_personal_mean"]) for r in rows if r.get("acc_personal_mean")]
        a1.plot(*zip(*pts), marker="o", label=f"{name} personalised")
        a2.plot([r["round"] for r in rows], [max(r["bytes_up"], 1) / 1e3 for r in rows],
                marker="o", label=name)
    rows = runs["fedms"][0]
    pts = [(r["round"], r["acc_global"]) for r in rows if r.get("acc_global") is not None]
    a1.plot(*zip(*pts), ls="--", color="gray", label="fedms global expert")
    switch = max(r["round"] for r in rows if r.get("stage") == 1) + 0.5
    for ax in (a1, a2):
        ax.axvline(switch, color="k", lw=0.6, ls=":")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    for r in rows:
        a2.annotate(f"k={r['active_blocks']}", (r["round"], max(r["bytes_up"], 1) / 1e3),
                    fontsize=6, xytext=(0, 4), textcoords="offset points", ha="center")
    a1.set_ylabel("accuracy")
    a1.set_ylim(0, 1)
    a1.legend(fontsize=7)
    a2.set_yscale("log")
    a2.set_ylabel("bytes up per round (kB)")
    a2.legend(fontsize=7)
    fig.suptitle("BBC, MiniLM-L6, Dirichlet 0.1, 20 clients (stage switch dotted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_clients(runs: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    clients = runs["fedms"][1]["clients"]
    order = sorted(range(len(clients)), key=lambda i: clients[i]["n_train"])
    width = 0.8 / len(runs)
    for j, name in enumerate(runs):
        accs = [runs[name][1]["clients"][i].get("acc_personal", 0) for i in order]
        ax.bar([x + (j - (len(runs) - 1) / 2) * width for x in range(len(order))], accs, width,
               label=name)
    gate = [clients[i].get("gate_local") for i in order]
    ax.plot(range(len(order)), [g if g is not None else float("nan") for g in gate], "k.",
            label="fedms gate weight on local expert")
    ax.set_xticks(range(len(order)), [f"{clients[i]['id']}\n{clients[i]['n_train']}"
                                      for i in order], fontsize=6)
    ax.set_xlabel("client id / n_train (sorted by size)")
    ax.set_ylabel("personalised accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_sal(sal: dict, out: Path) -> None:
    rows = sal["rows"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.6, 3.2), dpi=100)
    ax.plot(ks, [r["cached_ratio"] for r in rows], "o-", label="SAL, cached prefix")
    ax.plot(ks, [r["sal_ratio"] for r in rows], "s-", label="SAL, prefix recomputed")
    if "cached_ratio_min" in rows[0]:
        ax.plot(ks, [r["cached_ratio_min"] for r in rows], "o:", color="C0", alpha=0.6,
                label="SAL, cached (min over repeats)")
    ax.plot(ks, [r["target_ratio"] for r in rows], "k--", label="target k/L + 0.1")
    ax.axhline(1.0, color="gray", lw=0.6)
    ax.set_xlabel("active blocks k (of L = 6)")
    ax.set_ylabel("step time / all-blocks LoRA step (median)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def table(runs: dict) -> None:
    print("| algorithm | acc_personal_mean | acc_global | bytes_up (MB) | client_compute_s |"
          " wall (rounds) s |")
    print("|---|---|---|---|---|---|")
    for name, (_, s) in runs.items():
        g = "—" if s["acc_global"] is None else f"{s['acc_global']:.3f}"
        print(f"| {name} | {s['acc_personal_mean']:.3f} | {g} | {s['bytes_up'] / 1e6:.2f} |"
              f" {s['client_compute_s']:.0f} | {s['round_wall_s'] + s['eval_wall_s']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="?", default=str(ROOT / "runs/bench_fedms"))
    ap.add_argument("--sal", default=str(REPORTS / "fedms_sal_step.json"))
    args = ap.parse_args()
    REPORTS.mkdir(parents=True, exist_ok=True)
    base = Path(args.runs)
    runs = {a: load(base / a) for a in ALGOS if (base / a / "summary.json").exists()}
    tag = base.name.removeprefix("bench_fedms")  # "" for the main run, e.g. "_800s1" else
    if REQUIRED <= set(runs):
        plot_rounds(runs, REPORTS / f"fedms_bbc{tag}.png")
        plot_clients(runs, REPORTS / f"fedms_clients{tag}.png")
        table(runs)
    if Path(args.sal).exists():
        plot_sal(json.loads(Path(args.sal).read_text()), REPORTS / "fedms_sal_step.png")


if __name__ == "__main__":
    main()
