"""Report of a personalisation suite (bench/personalisation.toml, bench/fedms_dev.toml).

  python bench/personal_report.py runs/bench/personalisation [--ref fedms] [--out PREFIX]

Reads ROOT/SETTING/LABEL/seedK/{summary,metrics}.json(l) and prints markdown tables:
- per cell, mean over seeds with a 95% t-interval (mean ± t_{.975,n-1} · s / √n) of
  acc_personal_mean (client mean), acc_personal_weighted (example-weighted), acc_personal_p10
  (10th-percentile client) and acc_global; bytes (up + down, MB per run); client train / eval
  seconds (wall, inflated by machine load) and the cell process's CPU seconds (bench.json cpu_s,
  one torch thread: the cell's own work whatever else ran);
- paired differences against the reference cell (default fedms): per client k of the same
  federation (same seed = same partition), Δ_k = acc_k(ref) - acc_k(cell), mean over clients and
  seeds with a 95% bootstrap interval over clients (2,000 resamples, seeded);
and writes PREFIX-SETTING.png: acc_personal_weighted and acc_personal_mean per evaluated round,
mean over seeds (the curves: do they flatten?).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np

T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262]
KEYS = ("acc_personal_mean", "acc_personal_weighted", "acc_personal_p10", "acc_global")


def load(root: Path) -> dict:
    """{setting: {label: [(seed, summary, rows)]}} of the finished runs under root."""
    out: dict = {}
    for summary in sorted(root.glob("*/*/seed*/summary.json")):
        run = summary.parent
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
        cell = out.setdefault(run.parent.parent.name, {}).setdefault(run.parent.name, [])
        summ = json.loads(summary.read_text())
        bench = run / "bench.json"  # cpu_s: the cell process's user + system CPU seconds
        summ["cpu_s"] = json.loads(bench.read_text()).get("cpu_s") if bench.exists() else None
        cell.append((int(run.name[4:]), summ, rows))
    return out


def interval(values: list) -> str:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return "-"
    m = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{m:.3f} (n=1)"
    half = T975[min(len(vals), 10) - 2] * statistics.stdev(vals) / math.sqrt(len(vals))
    return f"{m:.3f} ± {half:.3f}"


def paired(ref_runs, runs, seed: int = 0) -> str:
    """Mean over clients (and seeds) of acc_k(ref) - acc_k(cell), 95% bootstrap interval."""
    by_seed = {s: summ for s, summ, _ in runs}
    deltas = []
    for s, ref, _ in ref_runs:
        if s not in by_seed:
            continue
        other = {c["id"]: c.get("acc_personal") for c in by_seed[s]["clients"]}
        deltas += [c["acc_personal"] - other[c["id"]] for c in ref["clients"]
                   if c.get("acc_personal") is not None and other.get(c["id"]) is not None]
    if not deltas:
        return "-"
    d = np.array(deltas)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (2000, len(d)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return f"{100 * d.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] (n={len(d)})"


def table(cells: dict, ref: str) -> list[str]:
    head = ("| cell | seeds | acc_personal_mean | acc_personal_weighted | acc_personal_p10 | "
            f"acc_global | Δ {ref} − cell, points (clients) | MB up+down | client train s | "
            "client eval s | CPU s |")
    lines = [head, "|" + "---|" * 11]
    for label, runs in cells.items():
        vals = {k: [s.get(k) for _, s, _ in runs] for k in KEYS}
        mb = statistics.fmean((s["bytes_up"] + s["bytes_down"]) / 1e6 for _, s, _ in runs)
        comp = statistics.fmean(s["client_compute_s"] for _, s, _ in runs)
        ev = statistics.fmean(s.get("client_eval_s") or 0 for _, s, _ in runs)
        cpu = [s["cpu_s"] for _, s, _ in runs if s.get("cpu_s") is not None]
        cpu_s = f"{statistics.fmean(cpu):.0f}" if cpu else "-"
        delta = paired(cells[ref], runs) if ref in cells and label != ref else ""
        lines.append(f"| {label} | {','.join(str(s) for s, _, _ in runs)} | "
                     + " | ".join(interval(vals[k]) for k in KEYS)
                     + f" | {delta} | {mb:.2f} | {comp:.0f} | {ev:.0f} | {cpu_s} |")
    return lines


def plot(cells: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("acc_personal_weighted", "acc_personal_mean")):
        for label, runs in cells.items():
            rounds = [r["round"] for r in runs[0][2] if r.get(key) is not None]
            curves = [[r[key] for r in rows if r.get(key) is not None] for _, _, rows in runs]
            n = min(len(c) for c in curves)
            ax.plot(rounds[:n], np.mean([c[:n] for c in curves], 0), marker="o", label=label)
        ax.set_xlabel("round")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--ref", default="fedms")
    ap.add_argument("--out", default="bench/reports/personalisation")
    args = ap.parse_args()
    for setting, cells in load(Path(args.root)).items():
        print(f"\n### {setting}\n")
        print("\n".join(table(cells, args.ref)))
        png = Path(f"{args.out}-{setting}.png")
        plot(cells, setting, png)
        print(f"\n![{setting}]({png.name})")


if __name__ == "__main__":
    main()
