"""Optional TensorBoard export of finished runs (extra `fedfm[tensorboard]`, imported lazily).

Each run becomes one TensorBoard run named `setting/label/seedK` (or its folder name) with one
scalar per numeric metrics.jsonl column, stepped by round; `tensorboard --logdir LOGDIR` shows them.
"""

from __future__ import annotations

from pathlib import Path

from fedfm.bench.collect import RunRecord
from fedfm.core.errors import ConfigError


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("TensorBoard logging needs the optional extra: "
                          "pip install 'fedfm[tensorboard]' (or pip install tensorboard).") from None
    return SummaryWriter


def run_name(r: RunRecord) -> str:
    if r.bench:
        return f"{r.setting}/{r.label}/seed{r.bench.get('seed')}"
    return f"{r.label}/{r.path.name}".replace(" ", "_")


def export(runs: list[RunRecord], logdir: Path) -> Path:
    """Write event files for `runs` under `logdir` (re-exporting a run replaces its events)."""
    writer_cls = _writer_class()
    for r in runs:
        folder = logdir / run_name(r)
        if folder.exists():
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        with writer_cls(log_dir=str(folder)) as w:
            for row in r.rows:
                step = int(row.get("round", 0))
                for key, value in row.items():
                    if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        w.add_scalar(key, value, step)
    return logdir
