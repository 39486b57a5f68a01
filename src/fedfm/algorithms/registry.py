"""The algorithm registry: name -> (factory, options dataclass, description).

Adding an algorithm = its module (ending in a `register(...)` call) + its name in `MODULES`.
The CLI, config validation and `fedfm list` find it here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedfm.algorithms import capabilities
from fedfm.core.errors import ConfigError, choices
from fedfm.core.schema import RunConfig, from_dict

MODULES = ["fedavg", "fedprox", "local", "fedper", "fedms_lm", "raffm", "heterofl", "fedmoe", "randommoe",
           "hetlora", "flexlora", "flora"]
MODULES += ["fedsa", "feddpa", "fedavg_ft", "ditto"]  # personalised baselines (issue #19)
# "fedms_lm" registers fedms: the row picks FedMS (classify) or FedMSLM (generate), so it lives in
# the module that imports both (fedms_lm imports fedms; fedms never imports fedms_lm)


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]  # (cfg, options, num_labels, num_clients) -> Algorithm
    options: type | None
    description: str
    capabilities: Any = None  # Capabilities | (options -> Capabilities); see capabilities.py


_ENTRIES: dict[str, Entry] = {}
_loaded = False


def register(name: str, factory: Callable[..., Any], options: type | None = None,
             description: str = "", capabilities: Any = None) -> None:
    _ENTRIES[name] = Entry(name, factory, options, description, capabilities)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in MODULES:
            importlib.import_module(f"fedfm.algorithms.{m}")


def names() -> list[str]:
    _load()
    return sorted(_ENTRIES)


def get(name: str) -> Entry:
    _load()
    if name not in _ENTRIES:
        raise ConfigError(f"Unknown algorithm '{name}'. Valid algorithms: {choices(_ENTRIES)}.")
    return _ENTRIES[name]


def options_for(cfg: RunConfig, name: str | None = None) -> Any:
    entry = get(name or cfg.algorithm)
    raw = cfg.algorithm_options(entry.name)
    if entry.options is None:
        if raw:
            raise ConfigError(f"Algorithm '{entry.name}' takes no options, got [{entry.name}].")
        return None
    return from_dict(entry.options, raw, entry.name)


def validate(cfg: RunConfig) -> None:
    """The algorithm exists and every algorithm section in the config is valid."""
    get(cfg.algorithm)
    for name in cfg.options:
        opts = options_for(cfg, name)
        check = getattr(opts, "check", None)
        if check is not None:
            check()
    capabilities.check(cfg, get(cfg.algorithm), options_for(cfg), list(_ENTRIES.values()),
                       lambda e: e.options() if e.options is not None else None)


def build(cfg: RunConfig, num_labels: int, num_clients: int) -> Any:
    entry = get(cfg.algorithm)
    return entry.factory(cfg, options_for(cfg), num_labels, num_clients)
