"""Benchmarks: `fedfm bench SUITE.toml` (a resumable grid of runs + a markdown report) and
`fedfm report RUN_DIR...` (the same report for any finished runs). See docs/bench.md.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from fedfm.bench.collect import find_runs
from fedfm.bench.grid import GridResult, is_finished, run_grid
from fedfm.bench.report import write_report
from fedfm.bench.suite import Cell, Suite, load_suite, select

__all__ = ["Cell", "GridResult", "Suite", "bench", "find_runs", "load_suite", "report_suite",
           "run_grid", "select", "write_report"]


def report_suite(suite: Suite, result: GridResult | None = None, command: str | None = None,
                 out: Path | None = None) -> Path | None:
    """Report every finished cell of the suite (not only those run now); None if none finished."""
    folders = [c.cfg.out for c in suite.cells if is_finished(c)]
    if not folders:
        return None
    failed = [(c.key, msg) for c, msg in (result.failed if result else [])]
    return write_report(find_runs(folders), out or suite.report, f"Benchmark report: {suite.name}",
                        command, suite.settings, failed)


def bench(path: str | Path, overrides: list[str] | None = None, *, only: list[str] | None = None,
          settings: list[str] | None = None, seeds: list[int] | None = None, skip_unknown: bool = False, out: str | None = None,
          report: str | None = None, quiet: bool = False, force: bool = False,
          tensorboard: str | None = None) -> tuple[Suite, GridResult, Path | None]:
    """Load a suite, run its unfinished (selected) cells, write the report."""
    suite = load_suite(path, overrides, skip_unknown=skip_unknown, out=out, only=only)
    cells = select(suite, only, settings, seeds)
    result = run_grid(suite, cells, quiet=quiet, force=force)
    command = " ".join(["fedfm bench", str(path), *map(shlex.quote, overrides or [])])
    md = report_suite(suite, result, command, Path(report) if report else None)
    if tensorboard or suite.tensorboard:
        from fedfm.bench.tensorboard import export

        export(find_runs([c.cfg.out for c in suite.cells if is_finished(c)]),
               Path(tensorboard or suite.out / "tensorboard"))
    return suite, result, md
