"""Run a config on the runtime it names (`runtime = "embedded" | "flower"`), or resume one.

The top of the library (only `fedfm.cli` sits above it): `fedfm.sim.run` is the embedded run
loop, `fedfm.flower.simulation` runs that same loop inside a Flower ServerApp.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedfm.config import RunConfig, apply_overrides, build_config
from fedfm.core.errors import ConfigError
from fedfm.sim.clients import Clients
from fedfm.sim.run import run as run_embedded
from fedfm.sim.world import World


def run(cfg: RunConfig, quiet: bool = False, resume: bool = False,
        transport: Callable[[World], Clients] | None = None) -> dict[str, Any]:
    """Train `cfg` on its runtime; returns summary.json's content.
    resume: continue the run in `cfg.out` from its last checkpoint (fedfm.sim.checkpoint).
    transport: where client halves run, for the embedded loop (default: in this process); given,
    it runs the embedded loop whatever `runtime` says (the Flower ServerApp passes its clients)."""
    if cfg.runtime == "flower" and transport is None:
        from fedfm.flower.simulation import run_flower

        return run_flower(cfg, quiet=quiet, resume=resume)
    return run_embedded(cfg, quiet=quiet, resume=resume, transport=transport)


def resume_run(run_dir: str | Path, overrides: list[str] | None = None,
               quiet: bool = False) -> dict[str, Any]:
    """`fedfm resume RUN_DIR [k=v ...]`: rebuild the run's config, refuse if it differs from
    the checkpoint's, continue from the last checkpointed round to `rounds`."""
    path = Path(run_dir)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"'{path}' is not a run folder (no config.json).")
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"'{cfg_file}' is not valid JSON.") from None
    raw = apply_overrides(raw, list(overrides or []))
    raw["out"], raw["overwrite"] = str(path), False
    cfg = build_config(raw)
    return run(cfg, quiet=quiet, resume=True)
