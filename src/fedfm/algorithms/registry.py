"""The algorithm registry: name -> (factory, options dataclass, description, what it honours).

Adding an algorithm = its module (ending in a `register(...)` call) + its name in `MODULES`
(FedMS's row is in fedms_lm.py, the module that sees both its classes).
The CLI, config validation, `fedfm list`, the task check (`task = "generate"`) and the
multi-task check find it here. Its row is the one declaration of what it can do:

    register("myalgo", lambda opts, env: MyAlgo(opts, env), MyAlgoOptions, "one line",
             capabilities=AVERAGING, tasks=("classify", "generate"), multitask=True)

`factory(options, env)` gets the algorithm's options and the world's flat handles
(fedfm.algorithms.env.Env), never the RunConfig: `build` turns a config into those.
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
    factory: Callable[..., Any]  # (options, env) -> Algorithm
    options: type | None
    description: str
    capabilities: Any = None  # Capabilities | (options -> Capabilities); see capabilities.py
    tasks: tuple[str, ...] = ("classify",)  # `task` values it runs (fedfm.algorithms.tasks)
    multitask: bool = False  # runs a multi-task federation ([[data.tasks]], fedfm.algorithms.multitask)
    stateless: bool = False  # clients keep no private memory (a Flower deployment can --resume)

    def build(self, options: Any = None, env: Any = None) -> Any:
        """The algorithm from its options alone (defaults when None) and the world's handles."""
        from fedfm.algorithms.env import Env

        if options is None and self.options is not None:
            options = self.options()
        return self.factory(options, env if env is not None else Env())


_ENTRIES: dict[str, Entry] = {}
_loaded = False


def register(name: str, factory: Callable[..., Any], options: type | None = None,
             description: str = "", capabilities: Any = None,
             tasks: tuple[str, ...] = ("classify",), multitask: bool = False,
             stateless: bool = False) -> None:
    _ENTRIES[name] = Entry(name, factory, options, description, capabilities, tuple(tasks),
                           multitask, stateless)


def supporting(task: str | None = None, multitask: bool | None = None,
               stateless: bool | None = None) -> list[str]:
    """Registered algorithms that run `task` / a multi-task federation / keep no client memory."""
    _load()
    return sorted(e.name for e in _ENTRIES.values()
                  if (task is None or task in e.tasks)
                  and (multitask is None or e.multitask == multitask)
                  and (stateless is None or e.stateless == stateless))


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
    """The builder: config -> (options, flat handles) -> the algorithm."""
    from fedfm.algorithms.env import from_config

    entry = get(cfg.algorithm)
    return entry.factory(options_for(cfg), from_config(cfg, num_labels, num_clients))
