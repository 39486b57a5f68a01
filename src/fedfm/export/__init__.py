"""`fedfm export`: a trained run as deployable artefacts (budget-sized subnetworks, peft adapters, merged weights)."""

from __future__ import annotations

import json
from pathlib import Path

from fedfm.config import RunConfig, build_config
from fedfm.core.errors import ConfigError


def finished_run(run_dir: Path) -> tuple[RunConfig, Path]:
    """A finished run folder's config and the path of its final global weights; ConfigError when
    either file is missing. Each export format checks the run further before loading the weights."""
    cfg_path, weights = run_dir / "config.json", run_dir / "final" / "global.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ConfigError(f"'{run_dir}' is not a finished run folder (needs config.json and "
                          "final/global.safetensors).")
    return build_config(json.loads(cfg_path.read_text())), weights
