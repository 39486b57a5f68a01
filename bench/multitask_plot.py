"""Curves of a paper-suite run folder tree: accuracy per evaluated round for every cell, and
per task for multi-task cells (acc_by_task). Reads metrics.jsonl only.

    python bench/multitask_plot.py runs/bench/paper20 bench/reports/paper-20news
writes <prefix>-<setting>.png per setting (one line per cell: global solid, personal dashed;
multi-task: one panel per task).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").open() if line.strip()]


def curves(rs: list[dict], task: str | None) -> tuple[list, list, list]:
    x, g, p = [], [], []
    for r in rs:
        if r.get("acc_personal_mean") is None:
            continue
        src = r["acc_by_task"][task] if task else {"global": r["acc_global"],
                                                      "personal": r["acc_personal_mean"]}
        x.append(r["round"])
        g.append(src["global"])
        p.append(src["personal"])
    return x, g, p


def plot_setting(setting: Path, out: Path) -> None:
    runs = sorted(setting.glob("*/seed*/metrics.jsonl"))
    if not runs:
        return
    first = rows(runs[0].parent)
    by_task = next((r["acc_by_task"] for r in reversed(first) if "acc_by_task" in r), {})
    tasks = [None, *by_task]  # None: the macro mean (multi-task) or the single task
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for m in runs:
            label = f"{m.parent.parent.name}/{m.parent.name}"
            x, g, p = curves(rows(m.parent), task)
            if any(v is not None for v in g):
                line, = ax.plot(x, g, marker="o", label=f"{label} global")
                ax.plot(x, p, ls="--", marker="x", color=line.get_color(), label=f"{label} personal")
            else:
                ax.plot(x, p, ls="--", marker="x", label=f"{label} personal")
        ax.set_title(task or ("macro mean over tasks" if by_task else setting.name))
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{setting.name}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out)


def main(root: str, prefix: str) -> None:
    for setting in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        plot_setting(setting, Path(f"{prefix}-{setting.name}.png"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
