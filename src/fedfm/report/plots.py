"""Plots: matplotlib (the `plot` extra) imported here only, when a plot is drawn, Agg backend."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fedfm.core.errors import ConfigError

INSTALL = "pip install 'fedfm[plot]'"


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def pyplot():
    """matplotlib.pyplot on the Agg backend; a ConfigError naming the `plot` extra if missing."""
    if not have_matplotlib():
        raise ConfigError(f"Plots need matplotlib, fedfm's `plot` extra: {INSTALL}.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rows: list[dict[str, Any]], out: Path, title: str) -> Path:
    """Accuracy per round: acc_global and acc_personal_mean."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for key, label in (("acc_global", "global"), ("acc_personal_mean", "personalised (mean)")):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
