"""Read finished run folders and aggregate them per (setting, label) over seeds.

Runs made by `fedfm bench` carry bench.json (setting, label, seed). Other runs are grouped by
their config without seed/out/overwrite: runs equal up to the seed are seeds of one cell, and
their label is the algorithm plus the config keys that tell same-algorithm groups apart.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfm.core.errors import DataError

ADHOC_SETTING = "runs"
IGNORED = ("seed", "out", "overwrite")


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    bench: dict[str, Any] | None = None
    setting: str = ADHOC_SETTING
    label: str = ""

    @property
    def wall_s(self) -> float:
        """Run wall time: summary's wall_s, else setup + rounds + evaluation."""
        s = self.summary
        if s.get("wall_s") is not None:
            return float(s["wall_s"])
        return sum(float(s.get(k) or 0) for k in ("setup_s", "round_wall_s", "eval_wall_s"))


@dataclass
class Group:
    """One row of a report table: a cell's runs over seeds."""

    setting: str
    label: str
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def algorithm(self) -> str:
        return str(self.runs[0].summary.get("algorithm", "?"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"Cannot read '{path}': {e}.") from None


def load_run(path: Path) -> RunRecord:
    if not (path / "summary.json").is_file():
        raise DataError(f"'{path}' is not a finished run folder (it has no summary.json).")
    rows = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    conf = path / "config.json"
    bench = path / "bench.json"
    rec = RunRecord(path, _read_json(conf) if conf.is_file() else {},
                    _read_json(path / "summary.json"), rows,
                    _read_json(bench) if bench.is_file() else None)
    if rec.bench:
        rec.setting, rec.label = str(rec.bench["setting"]), str(rec.bench["label"])
    return rec


def find_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Each path is a run folder or a folder holding run folders (searched recursively)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"'{p}' does not exist.")
        if (p / "summary.json").is_file():
            found.append(p)
            continue
        inner = sorted(s.parent for s in p.rglob("summary.json"))
        if not inner:
            raise DataError(f"'{p}' holds no finished run (no summary.json under it).")
        found.extend(inner)
    runs = [load_run(p) for p in dict.fromkeys(found)]
    label_adhoc([r for r in runs if r.bench is None])
    return runs


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        elif f"{prefix}{k}" not in IGNORED:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


def label_adhoc(runs: list[RunRecord]) -> None:
    """Label runs equal up to the seed alike: `algorithm` or `algorithm (key=value, ...)`."""
    flat = {id(r): _flatten(r.config) for r in runs}
    keys: dict[str, dict[str, str]] = {}  # group key -> flattened config
    for r in runs:
        keys.setdefault(json.dumps(flat[id(r)], sort_keys=True), flat[id(r)])
    names: dict[str, str] = {}
    for gk, conf in keys.items():
        algo = json.loads(conf.get("algorithm", '"?"'))
        peers = [c for c in keys.values() if c.get("algorithm") == conf.get("algorithm")]
        diff = sorted(k for k in set().union(*peers) if len({c.get(k) for c in peers}) > 1)
        extra = ", ".join(f"{k}={json.loads(conf[k]) if k in conf else '-'}" for k in diff[:3])
        names[gk] = f"{algo} ({extra})" if extra else algo
    for r in runs:
        r.label = names[json.dumps(flat[id(r)], sort_keys=True)]


def group_runs(runs: list[RunRecord]) -> dict[str, list[Group]]:
    """setting -> groups (in first-seen order)."""
    out: dict[str, dict[str, Group]] = {}
    for r in runs:
        g = out.setdefault(r.setting, {}).setdefault(r.label, Group(r.setting, r.label))
        g.runs.append(r)
    return {s: list(gs.values()) for s, gs in out.items()}


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (None for one value) and count of the non-None values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals)


def curve(group: Group, key: str) -> list[tuple[int, float, float]]:
    """Per round: (round, cumulative MB up+down, mean of `key` over seeds) where evaluated."""
    by_round: dict[int, list[tuple[float, float]]] = {}
    for r in group.runs:
        total = 0.0
        for row in r.rows:
            total += (row.get("bytes_up") or 0) + (row.get("bytes_down") or 0)
            if row.get(key) is not None:
                by_round.setdefault(int(row["round"]), []).append((total / 1e6, float(row[key])))
    return [(rnd, statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts))
            for rnd, pts in sorted(by_round.items())]
