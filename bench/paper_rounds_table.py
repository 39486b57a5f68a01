"""Accuracy at chosen rounds for every cell of a paper-suite run tree, mean ± spread over seeds,
with each seed's worker CPU seconds and load (bench.json). Reads metrics.jsonl / bench.json only.

    python bench/paper_rounds_table.py runs/bench/paper_cos [--rounds 4,12,20,30]

spread = half the range over seeds (max - min) / 2, so "m ± s" covers every seed's value; with
one seed it is the value alone. A round that was not evaluated is "–".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paper_convergence import evals  # bench/ is sys.path[0] when run as a script

CURVES = (("acc_global", "global"), ("acc_personal_mean", "personal"))


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    m = sum(values) / len(values)
    return f"{m:.1f}" if len(values) == 1 else f"{m:.1f} ± {(max(values) - min(values)) / 2:.1f}"


def cost(runs: list[Path]) -> str:
    parts = []
    for r in runs:
        b = json.loads((r / "bench.json").read_text()) if (r / "bench.json").exists() else {}
        cpu, load = b.get("cpu_s"), b.get("load_avg")
        parts.append(f"{cpu:.0f} ({load:.1f})" if cpu is not None and load is not None else "?")
    return " / ".join(parts)


def table(root: Path, rounds: list[int]) -> list[str]:
    head = " | ".join(f"r{t}" for t in rounds)
    lines = [f"| setting | cell | curve | seeds | {head} | CPU s per seed (load) |",
             "|---|---|---|---|" + "---|" * len(rounds) + "---|"]
    for c in sorted(root.glob("*/*")):
        runs = sorted(p.parent for p in c.glob("seed*/metrics.jsonl"))
        for key, name in CURVES:
            curves = [dict(evals(r, key)) for r in runs]
            if not any(curves):
                continue
            vals = " | ".join(cell([cv[t] for cv in curves if t in cv]) for t in rounds)
            seeds = ",".join(r.name.removeprefix("seed") for r in runs)
            lines.append(f"| {c.parent.name} | {c.name} | {name} | {seeds} | {vals} | "
                         f"{cost(runs)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--rounds", default="4,12,20,30")
    a = ap.parse_args()
    print("\n".join(table(Path(a.root), [int(x) for x in a.rounds.split(",")])))


if __name__ == "__main__":
    main()
