"""A benchmark suite: a TOML grid of cells (algorithm + overrides) x settings x seeds.

    name = "paper"
    out = "runs/bench/paper"            # one run folder per cell: out/SETTING/LABEL/seedK
    report = "bench/reports/paper.md"   # default: out/report.md (plots next to it)
    isolate = true                      # one process per cell: its own peak memory (default)
    seeds = [0, 1]
    algorithms = ["fedprox", "local"]   # shorthand cells (label = name); "all" = every registered

    [base]                              # a run config (same keys as `fedfm run` TOMLs)
    rounds = 3
    model.name = "minilm-l6"
    [base.fedprox]                      # algorithm sections apply only to that algorithm's cells
    mu = 0.01

    [settings.dir0.1]                   # one table per setting (e.g. a partition), merged over base
    title = "Dirichlet alpha = 0.1"
    data.alpha = 0.1

    [[cells]]                           # explicit cells: label, algorithm, any config keys;
    label = "fedavg-full"               # a label equal to a shorthand name replaces that cell
    algorithm = "fedavg"
    model.finetune = "full"
    settings = ["dir0.5"]               # optional: only in these settings

A cell's config = base <- setting <- cell <- command-line overrides (later wins).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfm.config import RUN_FIELDS, RunConfig, apply_overrides, build_config, read_toml
from fedfm.core.errors import ConfigError, choices

SUITE_KEYS = {"name", "out", "report", "seeds", "algorithms", "base", "settings", "cells",
              "tensorboard", "isolate"}
CELL_KEYS = {"label", "settings"}  # besides config keys
SETTING_KEYS = {"title"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    setting: str
    label: str
    seed: int
    cfg: RunConfig

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.label}/seed{self.seed}"


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    out: Path
    report: Path
    seeds: tuple[int, ...]
    settings: dict[str, str]  # name -> title
    cells: tuple[Cell, ...]
    tensorboard: bool = False
    isolate: bool = True  # one fresh process per cell (own peak memory, crash containment)
    skipped: tuple[str, ...] = field(default=())  # labels dropped by skip_unknown

    def labels(self) -> list[str]:
        return list(dict.fromkeys(c.label for c in self.cells))


def deep_merge(into: dict[str, Any], frag: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge `frag` over `into` (tables merge, other values replace)."""
    for k, v in frag.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            deep_merge(into[k], v)
        else:
            into[k] = copy.deepcopy(dict(v) if isinstance(v, Mapping) else v)
    return into


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError(f"{what} {value!r} must be a non-empty name of letters, digits, "
                          f"'.', '_', '+' or '-' (it becomes a folder name).")
    return value


def _cell_specs(raw: Mapping[str, Any], registered: list[str]) -> list[dict[str, Any]]:
    """`algorithms` shorthand + `[[cells]]` tables -> list of {label, algorithm, settings, frag}.

    A [[cells]] table whose label is also a shorthand name replaces that shorthand cell (so
    `algorithms = "all"` can be refined per algorithm)."""
    algos = raw.get("algorithms", [])
    if algos == "all":  # FedAvg first: the reports' ratio tables compare with the first cell
        algos = sorted(registered, key=lambda a: a != "fedavg")
    if not isinstance(algos, list) or not all(isinstance(a, str) for a in algos):
        raise ConfigError("'algorithms' must be a list of algorithm names or \"all\".")
    tables = raw.get("cells", [])
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise ConfigError("'cells' must be an array of tables ([[cells]]).")
    specs = [{"label": a, "algorithm": a, "settings": None, "frag": {"algorithm": a}}
             for a in algos]
    for t in tables:
        frag = {k: v for k, v in t.items() if k not in CELL_KEYS}
        algorithm = frag.get("algorithm", t.get("label"))
        if not isinstance(algorithm, str):
            raise ConfigError(f"A [[cells]] table needs an 'algorithm' (or a label that is one): {dict(t)}.")
        frag["algorithm"] = algorithm
        sets = t.get("settings")
        if sets is not None and (not isinstance(sets, list) or not all(isinstance(s, str) for s in sets)):
            raise ConfigError(f"cells '{t.get('label', algorithm)}': 'settings' must be a list of names.")
        specs.append({"label": t.get("label", algorithm), "algorithm": algorithm,
                      "settings": sets, "frag": frag})
    explicit = {s["label"] for s in specs[len(algos):]}
    specs = [s for s in specs[:len(algos)] if s["label"] not in explicit] + specs[len(algos):]
    seen: set[str] = set()
    for s in specs:
        _name(s["label"], "Cell label")
        if s["label"] in seen:
            raise ConfigError(f"Cell label '{s['label']}' appears twice; give each cell its own label.")
        seen.add(s["label"])
    if not specs:
        raise ConfigError("The suite has no cells: give 'algorithms = [...]' or [[cells]] tables.")
    return specs


def _settings(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    table = raw.get("settings", {"default": {}})
    if not isinstance(table, Mapping) or not table:
        raise ConfigError("[settings] must hold at least one [settings.NAME] table.")
    for name, frag in table.items():
        _name(name, "Setting name")
        if not isinstance(frag, Mapping):
            raise ConfigError(f"[settings.{name}] must be a table of config keys.")
    return {n: dict(f) for n, f in table.items()}


def _check_unknown(specs: list[dict[str, Any]], registered: list[str], where: str,
                   skip_unknown: bool, only: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Cells of unregistered algorithms are an error, unless skipped or not selected by `only`."""
    missing = [s for s in specs if s["algorithm"] not in registered]
    wanted = [s for s in missing if only is None or s["label"] in only]
    if wanted and not skip_unknown:
        names = ", ".join(f"'{s['algorithm']}' (cell '{s['label']}')" for s in wanted)
        raise ConfigError(
            f"{where}: algorithm(s) not registered: {names}. Registered algorithms: "
            f"{choices(registered)}. Run them once they exist, drop them with --only, or pass "
            f"--skip-unknown to run the rest."
        )
    return [s for s in specs if s not in missing], [s["label"] for s in missing]


def _base(raw: Mapping[str, Any], cell_algos: set[str], registered: list[str]) -> dict[str, Any]:
    base = raw.get("base", {})
    if not isinstance(base, Mapping):
        raise ConfigError("[base] must be a table holding a run config.")
    for key in base:
        if key not in RUN_FIELDS and key not in cell_algos and key not in registered:
            valid = set(RUN_FIELDS) | set(registered)
            raise ConfigError(f"[base] key '{key}' is neither a config key nor an algorithm. "
                              f"Valid: {choices(valid)}.")
    return dict(base)


def cell_raw(base: Mapping[str, Any], setting: Mapping[str, Any], frag: Mapping[str, Any],
             overrides: list[str]) -> dict[str, Any]:
    """base <- setting <- cell <- overrides; algorithm sections of other algorithms dropped."""
    raw = deep_merge(deep_merge(deep_merge({}, base), setting), frag)
    raw = apply_overrides(raw, list(overrides))
    algorithm = raw.get("algorithm", "fedavg")
    return {k: v for k, v in raw.items() if k in RUN_FIELDS or k == algorithm}


def _expand(p: Path, base: dict[str, Any], settings: dict[str, dict[str, Any]],
            specs: list[dict[str, Any]], seeds: list[int], root: Path,
            overrides: list[str]) -> list[Cell]:
    """Seed-major order: a grid stopped half-way already holds every cell once."""
    for s in specs:
        for sname in s["settings"] or []:
            if sname not in settings:
                raise ConfigError(f"{p}: cell '{s['label']}' names setting '{sname}'; suite "
                                  f"settings: {choices(settings)}.")
    cells = []
    for seed in seeds:
        for sname, sfrag in settings.items():
            frag = {k: v for k, v in sfrag.items() if k not in SETTING_KEYS}
            for s in specs:
                if s["settings"] is None or sname in s["settings"]:
                    cells.append(_cell(p, base, frag, s, sname, seed, root, overrides))
    return cells


def _read_toml(p: Path) -> dict[str, Any]:
    raw = read_toml(p, "Suite file")
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise ConfigError(f"{p}: unknown suite key '{sorted(unknown)[0]}'. Valid keys: "
                          f"{choices(SUITE_KEYS)}.")
    return raw


def _cell(p: Path, base: Mapping[str, Any], frag: Mapping[str, Any], spec: dict[str, Any],
          setting: str, seed: int, root: Path, overrides: list[str]) -> Cell:
    r = cell_raw(base, frag, spec["frag"], overrides)
    r.update(seed=seed, out=str(root / setting / spec["label"] / f"seed{seed}"), overwrite=True)
    try:
        cfg = build_config(r)
    except ConfigError as e:
        raise ConfigError(f"{p}: cell '{spec['label']}' in setting '{setting}': {e}") from None
    return Cell(setting, spec["label"], seed, cfg)


def load_suite(path: str | Path, overrides: list[str] | None = None, *,
               skip_unknown: bool = False, out: str | None = None,
               only: list[str] | None = None) -> Suite:
    """Read and validate a suite; every cell's config is built (so errors surface before running)."""
    from fedfm.algorithms import registry

    p = Path(path)
    raw = _read_toml(p)
    registered = registry.names()
    specs, skipped = _check_unknown(_cell_specs(raw, registered), registered, str(p),
                                    skip_unknown, only)
    base = _base(raw, {s["algorithm"] for s in specs} | set(skipped), registered)
    settings = _settings(raw)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{p}: 'seeds' must be a non-empty list of integers, got {seeds!r}.")
    root = Path(out or raw.get("out", f"runs/bench/{p.stem}"))
    cells = _expand(p, base, settings, specs, seeds, root, overrides or [])
    titles = {n: str(f.get("title", n)) for n, f in settings.items()}
    return Suite(name=str(raw.get("name", p.stem)), path=p, out=root,
                 report=Path(raw.get("report", root / "report.md")), seeds=tuple(seeds),
                 settings=titles, cells=tuple(cells), tensorboard=bool(raw.get("tensorboard", False)),
                 isolate=bool(raw.get("isolate", True)), skipped=tuple(skipped))


def select(suite: Suite, only: list[str] | None = None, settings: list[str] | None = None,
           seeds: list[int] | None = None) -> list[Cell]:
    """The cells to run: filtered by label, setting and seed (unknown names are errors)."""
    for names, valid, what in ((only, suite.labels(), "label"),
                               (settings, list(suite.settings), "setting"),
                               (seeds, list(suite.seeds), "seed")):
        bad = [n for n in names or [] if n not in valid]
        if bad:
            raise ConfigError(f"Unknown {what} '{bad[0]}' in this suite. Valid: {choices(valid)}.")
    return [c for c in suite.cells if (not only or c.label in only)
            and (not settings or c.setting in settings) and (not seeds or c.seed in seeds)]
