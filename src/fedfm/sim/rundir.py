"""A run's folder: config.json, metrics.jsonl, summary.json, final/global.safetensors, plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fedfm.core.errors import ConfigError
from fedfm.core.schema import RunConfig


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, cfg: RunConfig) -> RunDir:
        run = cls(cfg.out)
        if run.path.exists() and any(run.path.iterdir()):
            if not cfg.overwrite:
                raise ConfigError(
                    f"Output folder '{run.path}' already holds a run. Choose another with "
                    f"out=..., or pass overwrite=true to replace it."
                )
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
        (run.path / "metrics.jsonl").write_text("")
        return run

    def append_metrics(self, row: dict[str, Any]) -> None:
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2))

    def save_global(self, tensors: dict[str, torch.Tensor]) -> Path:
        (self.path / "final").mkdir(exist_ok=True)
        out = self.path / "final" / "global.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
        return out
