"""`fedfm bench` and `fedfm report` subcommands (added to the main parser by fedfm.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _seeds(text: str | None) -> list[int] | None:
    from fedfm.core.errors import ConfigError

    try:
        return [int(x) for x in _names(text)] if text else None
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got '{text}'.") from None


def cmd_bench(args: argparse.Namespace) -> int:
    from fedfm.bench import bench, load_suite, select

    if args.dry_run:
        suite = load_suite(args.suite, args.overrides, skip_unknown=args.skip_unknown,
                           out=args.out, only=_names(args.only))
        from fedfm.bench.grid import is_finished

        for c in select(suite, _names(args.only), _names(args.settings), _seeds(args.seeds)):
            state = "finished" if is_finished(c) else "to run"
            print(f"{c.key:<44} {c.cfg.algorithm:<10} {state:<9} {c.cfg.out}")
        if suite.skipped:
            print(f"skipped (algorithm not registered): {', '.join(suite.skipped)}")
        return 0
    suite, result, report = bench(
        args.suite, args.overrides, only=_names(args.only), settings=_names(args.settings),
        seeds=_seeds(args.seeds), skip_unknown=args.skip_unknown, out=args.out, report=args.report, quiet=args.quiet,
        tensorboard=args.tensorboard)
    print(f"ran {len(result.ran)}, skipped {len(result.skipped)} finished, failed "
          f"{len(result.failed)} in {result.wall_s:.0f}s", file=sys.stderr)
    if suite.skipped:
        print(f"not run (algorithm not registered): {', '.join(suite.skipped)}", file=sys.stderr)
    print(f"report: {report}" if report else "report: none (no finished cell)")
    return 1 if result.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedfm.bench import find_runs, write_report

    runs = find_runs(args.run_dirs)
    out = write_report(runs, Path(args.out), args.title, "fedfm report " + " ".join(args.run_dirs),
                       baseline=args.baseline)
    if args.tensorboard:
        from fedfm.bench.tensorboard import export

        export(runs, Path(args.tensorboard))
    print(f"report: {out} ({len(runs)} runs)")
    return 0


def add_parsers(sub) -> None:
    b = sub.add_parser("bench", help="run a benchmark suite (grid of runs) and write a report")
    b.add_argument("suite", help="a suite TOML, e.g. bench/quick.toml")
    b.add_argument("overrides", nargs="*",
                   help="dotted key=value overrides applied to every cell, e.g. rounds=1")
    b.add_argument("--only", help="comma-separated cell labels to run (default: all)")
    b.add_argument("--settings", help="comma-separated settings to run (default: all)")
    b.add_argument("--seeds", help="comma-separated seeds to run (default: the suite's)")
    b.add_argument("--out", help="root folder of the cells' runs (default: the suite's `out`)")
    b.add_argument("--report", help="report path (default: the suite's `report`)")
    b.add_argument("--skip-unknown", action="store_true",
                   help="run the cells whose algorithm is registered, skip the others")
    b.add_argument("--force", action="store_true",
                   help="rerun the selected cells even if finished (e.g. after a code change)")
    b.add_argument("--dry-run", action="store_true", help="list the cells and their state; run nothing")
    b.add_argument("--tensorboard", metavar="LOGDIR", help="also export metrics to TensorBoard")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)
    r = sub.add_parser("report", help="compare finished runs: markdown tables + plots")
    r.add_argument("run_dirs", nargs="+", help="run folders, or folders holding run folders")
    r.add_argument("--out", default="report.md", help="markdown path; PNGs go next to it")
    r.add_argument("--title", default="Run comparison")
    r.add_argument("--baseline", help="cell label the ratio tables compare against "
                   "(default: each setting's first)")
    r.add_argument("--tensorboard", metavar="LOGDIR", help="also export metrics to TensorBoard")
    r.set_defaults(func=cmd_report)
