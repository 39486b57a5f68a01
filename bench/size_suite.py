"""Size a bench suite from a short rehearsal, robustly to a busy machine.

Rehearse a few cells with one torch thread (so CPU time = work, no OpenMP spinning) and few
rounds, e.g.

    fedfm bench bench/paper.toml rounds=2 train.threads=1 --seeds 0 --settings dir0.1 \
        --only fedavg-lora,fedavg-full,fedms,raffm,fedmoe --out /tmp/rehearsal
    python bench/size_suite.py /tmp/rehearsal --rounds 4 --suite bench/paper.toml

For each rehearsed cell: the worker's CPU seconds (bench.json `cpu_s`) are split into start-up
(interpreter, model, tokenisation) and rounds in the proportion of their wall times in the same
run (contention hits both alike), giving CPU s per round. A cell of R rounds then costs
`startup + R · per_round` CPU seconds = its wall time on one idle core; on two idle cores it lies
between that / 2 (perfect scaling) and that / 1, and `--speedup` (default 1.4, measured for
MiniLM LoRA steps: bench/reports/bench-sizing.md) picks a point.
Cells of the suite not rehearsed take the cost of the rehearsed cell named by `--like`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cell_costs(folder: Path) -> dict[str, dict[str, float]]:
    """label -> {startup, per_round} CPU seconds, from every rehearsed run under `folder`."""
    out: dict[str, dict[str, float]] = {}
    for bench_file in sorted(folder.rglob("bench.json")):
        run = bench_file.parent
        b = json.loads(bench_file.read_text())
        s = json.loads((run / "summary.json").read_text())
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
        if not b.get("cpu_s") or not rows:
            continue
        round_wall = sum(r["round_wall_s"] + (r.get("eval_wall_s") or 0) for r in rows)
        share = min(1.0, round_wall / b["cell_wall_s"])
        out[b["label"]] = {"startup": b["cpu_s"] * (1 - share),
                           "per_round": b["cpu_s"] * share / len(rows),
                           "threads": s.get("threads", 1), "load": b.get("load_avg") or 0}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rehearsal", type=Path)
    p.add_argument("--rounds", type=int, required=True, help="rounds of the real suite")
    p.add_argument("--suite", help="the suite TOML, to count its cells")
    p.add_argument("--speedup", type=float, default=1.4, help="2-thread speed-up over 1 thread")
    p.add_argument("--like", default="fedavg-lora=fedprox,local,fedper;raffm=heterofl;"
                   "fedmoe=randommoe", help="rehearsed=unrehearsed,... groups")
    args = p.parse_args()
    costs = cell_costs(args.rehearsal)
    for group in args.like.split(";"):
        src, _, dst = group.partition("=")
        for d in filter(None, dst.split(",")):
            if src in costs and d not in costs:
                costs[d] = {**costs[src], "like": src}
    print(f"{'cell':<14} {'startup cpu s':>13} {'cpu s/round':>12} {'1 core s':>9} "
          f"{'2 cores s':>10}  (rounds={args.rounds}, speedup {args.speedup})")
    total = 0.0
    for label, c in costs.items():
        one = c["startup"] + args.rounds * c["per_round"]
        total += one / args.speedup
        like = f"  (as {c['like']})" if "like" in c else f"  (load {c['load']:.1f})"
        print(f"{label:<14} {c['startup']:>13.1f} {c['per_round']:>12.1f} {one:>9.0f} "
              f"{one / args.speedup:>10.0f}{like}")
    runs = 1
    if args.suite:
        from fedfm.bench import load_suite

        suite = load_suite(args.suite, skip_unknown=True)
        runs = len(suite.seeds) * len(suite.settings)
    print(f"one setting x seed: {total / 60:.1f} min on 2 idle cores; x{runs} (settings x seeds) "
          f"= {total * runs / 60:.1f} min (range {total * runs * args.speedup / 2 / 60:.0f}-"
          f"{total * runs * args.speedup / 60:.0f} min for speedup 2..1)")


if __name__ == "__main__":
    main()
