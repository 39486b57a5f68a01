"""Run a suite's cells through the embedded runner: resumable, with a progress bar.

A cell is finished when its folder holds summary.json and a config.json equal to the cell's
config (ignoring `overwrite`); finished cells are skipped, anything else is (re)run from scratch.
A failing cell is recorded (error.txt in its folder) and the grid goes on with the next one.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedfm.bench.suite import Cell, Suite
from fedfm.core.schema import RunConfig
from fedfm.report.ui import console

BENCH_FILE = "bench.json"  # (suite, setting, label, seed) of a run made by `fedfm bench`


@dataclass
class CellStats:
    """Measured around one cell: written to its bench.json."""

    cpu_s: float | None = None  # user + sys CPU seconds of its worker process (isolated only)
    loads: list[float] = field(default_factory=list)  # 1-min load averages sampled while it ran


@dataclass
class GridResult:
    ran: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    wall_s: float = 0.0


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(config, default=str))  # tuples -> lists, as in config.json
    d.pop("overwrite", None)
    return d


def _same(saved: Any, new: Any, default: Any) -> bool:
    """Equal configs; a key missing from `saved` (added to fedfm since) counts if it is default."""
    if isinstance(saved, dict) and isinstance(new, dict):
        default = default if isinstance(default, dict) else {}
        return all(k in new for k in saved) and all(
            _same(saved[k], new[k], default.get(k)) if k in saved else new[k] == default.get(k)
            for k in new)
    return saved == new


def is_finished(cell: Cell) -> bool:
    """summary.json exists and config.json equals the cell's config (`overwrite` aside)."""
    folder = Path(cell.cfg.out)
    try:
        saved = json.loads((folder / "config.json").read_text())
        json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return _same(_comparable(saved), _comparable(cell.cfg.to_dict()),
                 _comparable(RunConfig().to_dict()))


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def write_bench_file(cell: Cell, suite: Suite, wall_s: float | None,
                     stats: CellStats | None = None) -> None:
    stats = stats or CellStats()
    info = {"suite": suite.name, "setting": cell.setting, "setting_title":
            suite.settings.get(cell.setting, cell.setting), "label": cell.label,
            "seed": cell.seed, "cell_wall_s": _round(wall_s),
            "isolated": suite.isolate, "cpu_s": _round(stats.cpu_s),
            "load_avg": _round(statistics.fmean(stats.loads) if stats.loads else None)}
    (Path(cell.cfg.out) / BENCH_FILE).write_text(json.dumps(info, indent=2))


def _run_here(cell: Cell, stats: CellStats) -> str | None:
    from fedfm.run import run

    stats.loads.append(os.getloadavg()[0])
    try:
        run(cell.cfg, quiet=True)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one broken cell must not stop a 45-minute grid
        _fail(cell, traceback.format_exc())
        return f"{type(e).__name__}: {e}"
    return None


def _rounds_done(cell: Cell) -> int:
    try:
        with open(Path(cell.cfg.out) / "metrics.jsonl") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_isolated(cell: Cell, stats: CellStats,
                  on_round: Callable[[int], None] | None) -> str | None:
    """`python -m fedfm.bench.worker` on the cell's config; polls metrics.jsonl for progress."""
    cpu0 = _children_cpu_s()
    with tempfile.TemporaryDirectory(prefix="fedfm-cell-") as tmp:
        spec, log = Path(tmp) / "cell.json", Path(tmp) / "stderr.txt"
        spec.write_text(json.dumps(cell.cfg.to_dict(), default=str))
        with log.open("w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "fedfm.bench.worker", str(spec)],
                                    stdout=subprocess.DEVNULL, stderr=err)
            try:
                while True:
                    try:
                        proc.wait(timeout=1.0)
                        break
                    except subprocess.TimeoutExpired:
                        stats.loads.append(os.getloadavg()[0])
                        if on_round:
                            on_round(_rounds_done(cell))
            except BaseException:
                proc.kill()
                raise
        if proc.returncode == 0:
            stats.cpu_s = _children_cpu_s() - cpu0
            return None
        text = log.read_text()
        _fail(cell, text)
        lines = [x for x in text.splitlines() if x.strip()]
        return lines[-1] if lines else f"worker exited with status {proc.returncode}"


def _fail(cell: Cell, text: str) -> None:
    folder = Path(cell.cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").unlink(missing_ok=True)
    (folder / "error.txt").write_text(text)


def run_cell(cell: Cell, suite: Suite,
             on_round: Callable[[int], None] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Run one cell (in a fresh process when `suite.isolate`); (summary, None) or (None, error)."""
    t0, stats = time.perf_counter(), CellStats()
    error = _run_isolated(cell, stats, on_round) if suite.isolate else _run_here(cell, stats)
    if error is not None:
        return None, error
    write_bench_file(cell, suite, time.perf_counter() - t0, stats)
    return json.loads((Path(cell.cfg.out) / "summary.json").read_text()), None


def _line(cell: Cell, summary: dict[str, Any], wall: float) -> str:
    def f(v):
        return "  -  " if v is None else f"{v:.3f}"

    return (f"[green]done[/] {cell.key:<40} acc_global {f(summary.get('acc_global'))}  "
            f"acc_personal {f(summary.get('acc_personal_mean'))}  wall {wall:.0f}s")


def run_grid(suite: Suite, cells: list[Cell], quiet: bool = False,
             force: bool = False) -> GridResult:
    """Run every unfinished cell of `cells` (all of them when `force`) in order, with a progress
    bar over the cells to run."""
    result = GridResult()
    todo = []
    for c in cells:
        if not force and is_finished(c):
            result.skipped.append(c)
            if not (Path(c.cfg.out) / BENCH_FILE).exists():
                write_bench_file(c, suite, None)
        else:
            todo.append(c)
    if not quiet:
        console.print(f"suite {suite.name}: {len(cells)} cells, {len(result.skipped)} finished "
                      f"(skipped), {len(todo)} to run")
    t_all = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=quiet) as bar:
        task = bar.add_task("cells", total=len(todo))
        for cell in todo:
            bar.update(task, description=cell.key)
            t0 = time.perf_counter()
            summary, error = run_cell(cell, suite, lambda k, c=cell: bar.update(
                task, description=f"{c.key} round {k}/{c.cfg.rounds}"))
            if error is None:
                result.ran.append(cell)
                if not quiet:
                    bar.console.print(_line(cell, summary, time.perf_counter() - t0))
            else:
                result.failed.append((cell, error))
                if not quiet:
                    bar.console.print(f"[red]FAILED[/] {cell.key}: {error} "
                                      f"(traceback in {cell.cfg.out}/error.txt)")
            bar.advance(task)
    result.wall_s = time.perf_counter() - t_all
    return result
