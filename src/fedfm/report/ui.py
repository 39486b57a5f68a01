"""Terminal output: a live progress bar over rounds and clients, one line per round."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

console = Console(stderr=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "  -  "
    return f"{v:.3f}"


def round_line(row: dict[str, Any], rounds: int) -> str:
    return (
        f"round {row['round']}/{rounds}  acc_global {_fmt(row.get('acc_global'))}  "
        f"acc_personal {_fmt(row.get('acc_personal_mean'))}  "
        f"up {row['bytes_up'] / 1e6:.2f} MB  down {row['bytes_down'] / 1e6:.2f} MB  "
        f"wall {row['round_wall_s']:.1f}s  compute {row['client_compute_s']:.1f}s"
    )


class Progress:
    """Rounds bar + clients bar (rich); prints nothing live when `quiet`."""

    def __init__(self, rounds: int, quiet: bool = False):
        self.quiet = quiet
        self.bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, disable=quiet, transient=False,
        )
        self.rounds = self.bar.add_task("rounds", total=rounds)
        self.phase = self.bar.add_task("clients", total=1)

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start_round(self, rnd: int) -> None:
        self.bar.update(self.rounds, description=f"round {rnd + 1}")

    def clients(self, phase: str, done: int, total: int) -> None:
        self.bar.update(self.phase, description=f"{phase} clients", completed=done, total=total)

    def end_round(self, line: str) -> None:
        self.bar.advance(self.rounds)
        if not self.quiet:
            self.bar.console.print(line)
