"""TOML configs mapped onto frozen dataclasses, with dotted `key=value` overrides.

A config file has top-level keys (`algorithm`, `rounds`, `seed`, `out`) and sections
(`[model]`, `[data]`, `[sampling]`, `[train]`, `[eval]`, ...). A section named after a registered
algorithm (e.g. `[fedprox]`) holds that algorithm's options. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfm.errors import ConfigError, choices
from fedfm.flower.options import FlowerConfig
from fedfm.reliability import (
    AggregationConfig,
    AvailabilityConfig,
    CheckpointConfig,
    DPConfig,
    ValidationConfig,
    check_reliability,
)
from fedfm.resources import ResourcesConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class ModelConfig:
    """The foundation model and its adapters.

    name: a registered model ("minilm-l6", "tiny-bert") or "hf" with `path` = a local HF folder.
    num_layers: keep only the first N transformer blocks (None = all).
    """

    name: str = "minilm-l6"
    path: str | None = None
    finetune: str = "lora"  # lora | full | head
    num_layers: int | None = None
    max_length: int = 128
    pooling: str = "mean"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("query", "value")
    dropout: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    """The data set and how it is split over clients.

    partition: iid | dirichlet (label skew, `alpha`) | shards (`shards_per_client` classes each)
    | quantity (client sizes ~ Dirichlet(`alpha`), labels iid).
    Each client's share is split into train/test by `client_test_fraction` (personalised eval);
    `global_test_fraction` of the whole set is held out first as the pooled global test set.
    """

    name: str = "bbc"
    path: str | None = None
    partition: str = "dirichlet"
    alpha: float = 0.5
    num_clients: int = 10
    shards_per_client: int = 2
    min_examples: int = 4
    client_test_fraction: float = 0.2
    global_test_fraction: float = 0.2
    max_examples: int | None = None
    text_column: str = "text"
    label_column: str = "label"


@dataclass(frozen=True)
class SamplingConfig:
    """Client sampling: each round `max(min_clients, round(fraction * num_clients))` clients."""

    fraction: float = 1.0
    min_clients: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """Local training. `precision` = fp32 | bf16 (CPU autocast, fp32 master weights)."""

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-4
    head_lr: float | None = None
    weight_decay: float = 0.0
    max_steps: int | None = None
    precision: str = "fp32"
    threads: int | None = None
    grad_clip: float | None = 1.0


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: every `every` rounds (and always after the last one)."""

    every: int = 1
    batch_size: int = 64


@dataclass(frozen=True)
class CommConfig:
    """Wire format of tensors in messages (both directions), decoded back to fp32 on arrival.

    dtype: fp32 (exact) | bf16 (half the bytes) | int8 (a quarter: q = round(x / s),
    s = max|x| / 127 per tensor).
    """

    dtype: str = "fp32"


@dataclass(frozen=True)
class SimConfig:
    """The embedded simulator. `memory_budget_mb`: RAM for clients' private tensors; beyond it
    the least recently used clients are spilled to memory-mapped safetensors files in
    `spill_dir` (default: a temporary folder). None = keep everything in RAM."""

    memory_budget_mb: float | None = None
    spill_dir: str | None = None


@dataclass(frozen=True)
class RunConfig:
    algorithm: str = "fedavg"
    rounds: int = 3
    seed: int = 0
    out: str = "runs/run"
    overwrite: bool = False
    runtime: str = "embedded"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    availability: AvailabilityConfig = field(default_factory=AvailabilityConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Raw per-algorithm sections ({"fedprox": {"mu": 0.01}}), validated by the registry."""

    def algorithm_options(self, name: str | None = None) -> Mapping[str, Any]:
        return self.options.get(name or self.algorithm, {})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        options = d.pop("options")
        d.update({k: dict(v) for k, v in options.items()})
        return d

    def hash(self) -> str:
        """Stable hash of the whole config (used to refuse resuming with another config)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name != "options"}


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce/validate `value` against the annotation `tp`; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_check_type(v, item, where) for v in value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return value


def from_dict(cls: type, raw: Any, where: str = "") -> Any:
    """Build the frozen dataclass `cls` from a mapping, rejecting unknown keys and bad types."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{where}] must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        key = sorted(unknown)[0]
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"Unknown config key '{prefix}{key}'. Valid keys here: {choices(names)}."
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _check_type(value, hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`data.alpha=0.1` -> (["data", "alpha"], 0.1). Values use TOML syntax; bare words are strings."""
    if "=" not in item:
        raise ConfigError(f"Override '{item}' is not of the form key=value (e.g. data.alpha=0.1).")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"Override '{item}' has an empty key.")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"Override '{item}': '{part}' is not a section.")
            node = nxt
        node[path[-1]] = value
    return raw


def build_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a raw mapping (parsed TOML + overrides) into a RunConfig."""
    from fedfm.algorithms import registry

    kwargs: dict[str, Any] = {}
    options: dict[str, dict[str, Any]] = {}
    hints = typing.get_type_hints(RunConfig)
    for key, value in raw.items():
        if key in RUN_FIELDS:
            kwargs[key] = _check_type(value, hints[key], key)
        elif key in registry.names():
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{key}] must be a table of {key}'s options.")
            options[key] = dict(value)
        else:
            valid = set(RUN_FIELDS) | set(registry.names())
            raise ConfigError(
                f"Unknown config key '{key}'. Valid top-level keys and sections: {choices(valid)}."
            )
    cfg = RunConfig(**kwargs, options=options)
    check_values(cfg)
    registry.validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML file, apply overrides, validate. Errors name the file and the problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{p}' does not exist.")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Config file '{p}' is not valid TOML: {e}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file '{p}' is not UTF-8 text.") from None
    raw = apply_overrides(raw, overrides or [])
    try:
        return build_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def check_values(cfg: RunConfig) -> None:
    """Reject impossible values with a message naming the key and the valid range."""
    d, t, s = cfg.data, cfg.train, cfg.sampling
    rules = [
        (cfg.rounds >= 1, "rounds must be >= 1"),
        (d.num_clients >= 1, "data.num_clients must be >= 1"),
        (d.alpha > 0, f"data.alpha must be > 0 (got {d.alpha}); small values mean strong skew"),
        (d.shards_per_client >= 1, "data.shards_per_client must be >= 1"),
        (0 <= d.client_test_fraction < 1, "data.client_test_fraction must be in [0, 1)"),
        (0 < d.global_test_fraction < 1, "data.global_test_fraction must be in (0, 1)"),
        (0 < s.fraction <= 1, f"sampling.fraction must be in (0, 1] (got {s.fraction})"),
        (s.min_clients >= 1, "sampling.min_clients must be >= 1"),
        (t.local_epochs >= 1, "train.local_epochs must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.lr > 0, f"train.lr must be > 0 (got {t.lr})"),
        (t.precision in ("fp32", "bf16"), f"train.precision must be fp32 or bf16, not '{t.precision}'"),
        (cfg.model.max_length >= 8, "model.max_length must be >= 8"),
        (cfg.model.lora_rank >= 1, "model.lora_rank must be >= 1"),
        (cfg.model.finetune in ("lora", "full", "head"),
         f"model.finetune must be lora, full or head, not '{cfg.model.finetune}'"),
        (cfg.model.pooling in ("mean", "cls"), "model.pooling must be mean or cls"),
        (cfg.eval.every >= 1, "eval.every must be >= 1"),
        (cfg.runtime in ("embedded", "flower"), f"runtime must be embedded or flower, not '{cfg.runtime}'"),
        (cfg.comm.dtype in ("fp32", "bf16", "int8"),
         f"comm.dtype must be fp32, bf16 or int8, not '{cfg.comm.dtype}'"),
        (cfg.sim.memory_budget_mb is None or cfg.sim.memory_budget_mb >= 0,
         "sim.memory_budget_mb must be >= 0 (or unset for no limit)"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message + ".")
    cfg.resources.check(d.num_clients)
    cfg.flower.check()
    check_reliability(cfg)
