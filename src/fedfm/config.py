"""Load and validate a run config: TOML + dotted overrides -> RunConfig, checked against the registries.

The schema (frozen dataclasses, overrides, value ranges) is `fedfm.core.schema`, which every layer
may import; this module sits above the registries and checks what the schema cannot: that `algorithm`,
`model.name` and the data set names are registered, that every `[<algorithm>]` table holds that
algorithm's options, what `task = "generate"` supports, and multi-task federations. Library code below the
algorithms imports `fedfm.core.schema`, never this module (tests/test_layout.py checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedfm.algorithms import registry, tasks
from fedfm.core.errors import ConfigError
from fedfm.core.schema import (  # noqa: F401 (re-exported: the public config API)
    RUN_FIELDS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    apply_overrides,
    build_schema,
    from_dict,
    parse_override,
    read_toml,
)


def build_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a raw mapping (parsed TOML + overrides) into a RunConfig."""
    cfg = build_schema(raw, registry.names())
    check_names(cfg)
    tasks.check(cfg, registry.supporting("generate"))  # algorithms, finetune, runtime
    registry.validate(cfg)
    if cfg.data.tasks:
        from fedfm.algorithms.multitask import check_multitask

        check_multitask(cfg)
    elif cfg.sampling.enforce_tasks:
        raise ConfigError("sampling.enforce_tasks = true needs a multi-task federation "
                          "([[data.tasks]] tables); this config has one task.")
    return cfg


def check_names(cfg: RunConfig) -> None:
    """model.name and every data set name are registry rows (errors list the valid names)."""
    from fedfm.data import catalogue  # its loaders' modules import torch: only when checking
    from fedfm.models import registry as models

    models.get(cfg.model.name)
    for name in (cfg.data.name, *(t.name for t in cfg.data.tasks)):
        catalogue.get(name)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML file, apply overrides, validate. Errors name the file and the problem."""
    p = Path(path)
    raw = read_toml(p, "Config file")
    raw = apply_overrides(raw, overrides or [])
    try:
        return build_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
