"""Report plots (the `plot` extra, via fedfm.report.plots.pyplot): small PNGs for markdown reports."""

from __future__ import annotations

from pathlib import Path

from fedfm.bench.collect import Group, curve
from fedfm.report.plots import pyplot

PANELS = (("acc_personal_mean", "personalised accuracy (mean over clients)"),
          ("acc_global", "global accuracy (pooled test set)"))


def _draw(groups: list[Group], out: Path, title: str, x_bytes: bool) -> Path | None:
    """Two panels (personalised, global); one line per group; x = round or cumulative MB."""
    curves = {k: [(g.label, curve(g, k)) for g in groups] for k, _ in PANELS}
    if not any(pts for k in curves for _, pts in curves[k]):
        return None
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    colors = {g.label: cmap(i % cmap.N) for i, g in enumerate(groups)}  # same colour in both panels
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90, sharey=True)
    for ax, (key, name) in zip(axes, PANELS):
        for label, pts in curves[key]:
            if pts:
                xs = [p[1] if x_bytes else p[0] for p in pts]
                ax.plot(xs, [p[2] for p in pts], marker="o", ms=3, label=label,
                        color=colors[label])
        if x_bytes:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("cumulative MB sent (up + down)" if x_bytes else "round")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    h2, l2 = axes[1].get_legend_handles_labels()
    extra = [(h, lab) for h, lab in zip(h2, l2) if lab not in labels]
    handles += [h for h, _ in extra]
    labels += [lab for _, lab in extra]
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_rounds(groups: list[Group], out: Path, title: str) -> Path | None:
    """Accuracy vs round, per cell (mean over seeds)."""
    return _draw(groups, out, f"{title}: accuracy per round", x_bytes=False)


def plot_bytes(groups: list[Group], out: Path, title: str) -> Path | None:
    """Accuracy vs cumulative bytes sent (log scale), per cell (mean over seeds)."""
    return _draw(groups, out, f"{title}: accuracy vs communication", x_bytes=True)
