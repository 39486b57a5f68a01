"""Markdown report of finished runs: one table + two plots per setting, machine and speed probe.

Columns (per cell, over its seeds):
    acc_global          global model on the pooled global test set (mean ± sample std over seeds;
                        "-" when the algorithm has no global model, e.g. local-only)
    acc_personal_mean   mean over clients of each client's accuracy on its own test split
    up / down MB        exact encoded bytes over all rounds, client -> server / server -> client
    compute s           sum of client_update times (all clients, all rounds)
    compute s @ref      compute · (probe / probe_ref): compute rescaled to the median speed probe
                        of the report's runs with the same torch threads, so cells run while the
                        machine was slower compare fairly
    peak MB             peak resident memory of the run's process (max over seeds)
    wall s              the run's wall time (setup + rounds + evaluation)
    probe GFLOP/s       fp32 512x512 matmul speed measured at the start of the run (best of 20:
                        the machine's speed, not how much of it other processes took)

The second table compares each cell with the setting's first: accuracy differences in points,
ratios of bytes (up + down), rescaled compute, worker CPU seconds (`cpu_s` in bench.json: user +
system time of the cell's own process; with one torch thread it is the cell's work whatever
else ran, the most robust cost figure on a shared machine) and peak memory.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from fedfm.bench.collect import Group, RunRecord, group_runs, mean_std

COLUMNS = ("cell", "algorithm", "seeds", "acc_global", "acc_personal_mean", "up MB", "down MB",
           "compute s", "compute s @ref", "peak MB", "wall s", "probe GFLOP/s")


def _pm(values: list[Any], digits: int = 3) -> str:
    mean, std, n = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _num(values: list[Any], digits: int = 1, agg=statistics.fmean) -> str:
    vals = [float(v) for v in values if v is not None]
    return f"{agg(vals):.{digits}f}" if vals else "-"


def probe_ref(runs: list[RunRecord]) -> dict[Any, float]:
    """torch threads -> median speed probe of the runs with those threads (the probe scales
    with threads, so runs are only rescaled against runs of the same thread count)."""
    by_threads: dict[Any, list[float]] = {}
    for r in runs:
        if r.summary.get("speed_probe_gflops"):
            by_threads.setdefault(r.summary.get("threads"), []).append(
                float(r.summary["speed_probe_gflops"]))
    return {t: statistics.median(v) for t, v in by_threads.items()}


def _scaled(r: RunRecord, ref: dict[Any, float]) -> float | None:
    probe, base = r.summary.get("speed_probe_gflops"), ref.get(r.summary.get("threads"))
    if not probe or not base or r.summary.get("client_compute_s") is None:
        return None
    return float(r.summary["client_compute_s"]) * float(probe) / base


def shared_process(runs: list[RunRecord]) -> bool:
    """Run by `fedfm bench` with isolate = false: peak memory is the bench process's so far."""
    return any(r.bench and r.bench.get("isolated") is False for r in runs)


def table_row(g: Group, ref: dict[Any, float]) -> list[str]:
    s = [r.summary for r in g.runs]
    scaled = [_scaled(r, ref) for r in g.runs]
    return [
        g.label, g.algorithm, str(len(g.runs)),
        _pm([x.get("acc_global") for x in s]), _pm([x.get("acc_personal_mean") for x in s]),
        _num([x.get("bytes_up", 0) / 1e6 for x in s], 2),
        _num([x.get("bytes_down", 0) / 1e6 for x in s], 2),
        _num([x.get("client_compute_s") for x in s]), _num(scaled),
        _num([x.get("peak_rss_mb") for x in s], 0, max) + ("*" if shared_process(g.runs) else ""),
        _num([r.wall_s for r in g.runs]),
        _num([x.get("speed_probe_gflops") for x in s]),
    ]


RATIO_COLUMNS = ("cell", "Δ acc_global (points)", "Δ acc_personal (points)", "bytes ×",
                 "compute @ref ×", "worker CPU ×", "peak MB ×")


def _means(g: Group, ref: dict[Any, float]) -> dict[str, float | None]:
    s = [r.summary for r in g.runs]
    return {"g": mean_std([x.get("acc_global") for x in s])[0],
            "p": mean_std([x.get("acc_personal_mean") for x in s])[0],
            "bytes": mean_std([(x.get("bytes_up") or 0) + (x.get("bytes_down") or 0) for x in s])[0],
            "compute": mean_std([_scaled(r, ref) for r in g.runs])[0],
            "cpu": mean_std([(r.bench or {}).get("cpu_s") for r in g.runs])[0],
            "peak": mean_std([x.get("peak_rss_mb") for x in s])[0]}


def ratio_rows(groups: list[Group], ref: dict[Any, float]) -> list[list[str]]:
    """Each cell against the setting's first cell: accuracy differences and cost ratios."""
    base = _means(groups[0], ref)

    def diff(a, b):
        return "-" if a is None or b is None else f"{100 * (a - b):+.1f}"

    def ratio(a, b):
        return "-" if a is None or not b else f"{a / b:.3g}"

    rows = []
    for g in groups[1:]:
        m = _means(g, ref)
        rows.append([g.label, diff(m["g"], base["g"]), diff(m["p"], base["p"]),
                     ratio(m["bytes"], base["bytes"]), ratio(m["compute"], base["compute"]),
                     ratio(m["cpu"], base["cpu"]), ratio(m["peak"], base["peak"])])
    return rows


def markdown_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


SHOWN = (("model", "model.name"), ("finetune", "model.finetune"),
         ("max_length", "model.max_length"), ("data", "data.name"),
         ("partition", "data.partition"), ("alpha", "data.alpha"), ("clients", "data.num_clients"),
         ("max_examples", "data.max_examples"), ("fraction", "sampling.fraction"),
         ("rounds", "rounds"), ("precision", "train.precision"), ("batch", "train.batch_size"),
         ("lr", "train.lr"), ("max_steps", "train.max_steps"), ("threads", "train.threads"),
         ("tiers", "resources.tiers"), ("budget unit", "resources.unit"))


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def describe_config(configs: list[dict[str, Any]]) -> str:
    """What the runs of a setting share, then the shown keys that vary between their cells."""
    common, varying = [], []
    for name, key in SHOWN:
        values = [_get(c, key) for c in configs]
        if any(v != values[0] for v in values):
            varying.append(key)
        elif values[0] is not None and values[0] != {}:
            common.append(f"{name} {values[0]}")
    return ", ".join(common) + (f"; varies by cell: {', '.join(varying)}" if varying else "")


def _drift(runs: list[RunRecord], threads: Any) -> float:
    v = [float(r.summary["speed_probe_gflops"]) for r in runs
         if r.summary.get("speed_probe_gflops") and r.summary.get("threads") == threads]
    return max(v) / min(v) if v else 1.0


def machine_line(runs: list[RunRecord]) -> str:
    import torch

    threads = sorted({r.summary.get("threads") for r in runs if r.summary.get("threads")})
    line = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, torch threads {', '.join(map(str, threads)) or '?'}")
    probes = [float(r.summary["speed_probe_gflops"]) for r in runs
              if r.summary.get("speed_probe_gflops")]
    if probes:
        line += (f". Speed probe (fp32 512² matmul): {min(probes):.0f}–{max(probes):.0f} GFLOP/s "
                 f"over {len(probes)} runs (median {statistics.median(probes):.0f})")
        drift = max(_drift(runs, t) for t in probe_ref(runs))
        if drift > 1.5:
            line += (f"; at equal threads the machine's speed varied {drift:.1f}x between runs: "
                     f"compare times with the `@ref` column and ratios, not absolute seconds")
    loads = [float(r.bench["load_avg"]) for r in runs if r.bench and r.bench.get("load_avg")]
    if loads:
        line += (f". 1-min load average while the cells ran: {min(loads):.1f}–{max(loads):.1f} "
                 f"(mean {statistics.fmean(loads):.1f}; above {os.cpu_count()} means other "
                 f"processes competed for the cores and times are inflated)")
    return line + "."


def write_report(runs: list[RunRecord], out: Path, title: str, command: str | None = None,
                 titles: dict[str, str] | None = None,
                 failed: list[tuple[str, str]] | None = None, baseline: str | None = None) -> Path:
    """Write `out` (markdown) and its PNGs (`<stem>-<setting>-rounds.png`, `-bytes.png`).
    `baseline`: the cell label the ratio tables compare against (default: each setting's first)."""
    from fedfm.bench.plots import plot_bytes, plot_rounds

    out.parent.mkdir(parents=True, exist_ok=True)
    titles = titles or {r.setting: str(r.bench["setting_title"]) for r in runs
                        if r.bench and r.bench.get("setting_title")}
    ref = probe_ref(runs)
    lines = [f"# {title}", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC from {len(runs)} "
             f"finished runs." + (f" Command: `{command}`." if command else ""), "",
             f"Machine: {machine_line(runs)}", ""]
    for setting, groups in group_runs(runs).items():
        groups.sort(key=lambda g: g.label != baseline)  # the baseline cell first (stable)
        name = (titles or {}).get(setting, setting)
        lines += [f"## {name}" + (f" (`{setting}`)" if name != setting else ""), "",
                  f"Config: {describe_config([r.config for g in groups for r in g.runs])}.", "",
                  markdown_table(COLUMNS, [table_row(g, ref) for g in groups]), ""]
        if len(groups) > 1:
            lines += [f"Against `{groups[0].label}` (same setting, means over seeds; "
                      f"bytes = up + down):", "",
                      markdown_table(RATIO_COLUMNS, ratio_rows(groups, ref)), ""]
        for kind, plot in (("rounds", plot_rounds), ("bytes", plot_bytes)):
            png = plot(groups, out.parent / f"{out.stem}-{setting}-{kind}.png", name)
            if png is not None:
                lines += [f"![{name}: accuracy vs {kind}]({png.name})", ""]
    if shared_process(runs):
        lines += ["\\* peak MB of a cell run inside the bench process (suite `isolate = false`): "
                  "the process's peak so far, an upper bound, not the cell's own.", ""]
    if failed:
        lines += ["## Failed cells", ""] + [f"- `{k}`: {msg}" for k, msg in failed] + [""]
    lines += ["## Columns", "", "```", (__doc__ or "").split("Columns (per cell, over its seeds):")
              [-1].strip("\n"), "```", ""]
    out.write_text("\n".join(lines))
    return out
