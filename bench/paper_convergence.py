"""Did each curve of a paper-suite run tree flatten? Reads metrics.jsonl only.

    python bench/paper_convergence.py runs/bench/paper20 [--window 3] [--tol 0.5]

For every run (setting/cell/seed) and every curve it has (acc_global, acc_personal_mean) it
prints the final accuracy and the mean gain PER ROUND over the last `window` evaluations,

    gain = (a_n - a_{n-window}) / (t_n - t_{n-window})     (points per round; t = round number)

and calls the curve *flattened* when gain < tol (default 0.5 point per round). With
`eval.every = 1` this is the original per-evaluation rule, (a_n - a_{n-window}) / window; with
`eval.every = 2` the window spans 2·window rounds and the gain is still per round (so the rule
means the same thing whatever eval.every was). A curve that still rises faster is "rising"; one
with fewer than window + 1 evaluations is "short". Single evaluations are noisy (400 test
documents: ~2.5 pt standard error), so it also prints a smoothed slope, the mean of the last
`window` evaluations minus the mean of the `window` before, divided by the rounds between the
two blocks' centres (points per round; not used for the verdict).
Prints one markdown table; rows are per seed, then the per-cell verdict (flattened only if every
seed's curve flattened).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CURVES = ("acc_global", "acc_personal_mean")


def evals(run: Path, key: str) -> list[tuple[int, float]]:
    """(round, accuracy in points) of every evaluated round."""
    out = []
    for line in (run / "metrics.jsonl").open():
        if line.strip():
            r = json.loads(line)
            if r.get("acc_personal_mean") is not None and r.get(key) is not None:
                out.append((int(r["round"]), 100.0 * r[key]))
    return out


def gain(acc: list[tuple[int, float]], window: int) -> float | None:
    if len(acc) <= window:
        return None
    (t0, a0), (t1, a1) = acc[-1 - window], acc[-1]
    return (a1 - a0) / (t1 - t0)


def block_gain(acc: list[tuple[int, float]], window: int) -> float | None:
    if len(acc) < 2 * window:
        return None
    last, prev = acc[-window:], acc[-2 * window:-window]
    mean = lambda xs, i: sum(x[i] for x in xs) / window  # noqa: E731
    return (mean(last, 1) - mean(prev, 1)) / (mean(last, 0) - mean(prev, 0))


def verdict(g: float | None, tol: float) -> str:
    return "short" if g is None else ("flattened" if g < tol else "rising")


def table(root: Path, window: int, tol: float) -> list[str]:
    lines = ["| setting | cell | curve | seeds | final acc (per seed) | gain/round over the last "
             f"{window} evals (pt, per seed) | smoothed gain/round (pt) | verdict (< {tol} pt/round) |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in sorted(root.glob("*/*")):
        runs = sorted(p.parent for p in cell.glob("seed*/metrics.jsonl"))
        for key in CURVES:
            accs = [evals(r, key) for r in runs]
            accs = [a for a in accs if a]
            if not accs:
                continue
            gains = [gain(a, window) for a in accs]
            vs = {verdict(g, tol) for g in gains}
            v = vs.pop() if len(vs) == 1 else "mixed: " + ", ".join(verdict(g, tol) for g in gains)
            fin = " / ".join(f"{a[-1][1]:.1f}" for a in accs)
            gs = " / ".join("-" if g is None else f"{g:+.2f}" for g in gains)
            bs = " / ".join("-" if b is None else f"{b:+.2f}"
                            for b in (block_gain(a, window) for a in accs))
            lines.append(f"| {cell.parent.name} | {cell.name} | {key} | {len(accs)} | {fin} | "
                         f"{gs} | {bs} | {v} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--tol", type=float, default=0.5)
    a = ap.parse_args()
    print("\n".join(table(Path(a.root), a.window, a.tol)))


if __name__ == "__main__":
    main()
