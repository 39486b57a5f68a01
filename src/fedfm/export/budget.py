"""`fedfm export RUN_DIR --budget B --out DIR`: cut a deployable subnetwork out of a trained run.

The run's final super-network (final/global.safetensors: every block + the head) is reordered by
SPP (function-preserving; skipped for heterofl runs, whose prefixes were trained as they are),
sized to the budget (fraction of the blocks' parameters) and written as a standalone Hugging
Face folder of the run's own family (export_hf.py: `--shape bert` = a vanilla config that
`transformers.AutoModel.from_pretrained(DIR)` loads; `--shape elastic` = per-layer widths as
trained, loaded by fedfm), with classifier_head.safetensors, fedfm_export.json (pooling, labels,
widths and the measured report) and the tokenizer files.

Report: parameters, forward FLOPs per example (at model.max_length), latency per example of the
export and of the full model timed side by side, and global-test accuracy of both.

MiniLM (`model.name = "minilm-l6"`) runs through transformers' BertModel like every other
family; exports written by fedfm's former hand-written BERT (`--shape elastic` folders whose
config.json holds `fedfm_heads`) are refused with a message (re-export the run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from fedfm.config import RunConfig
from fedfm.core.errors import ConfigError
from fedfm.export import finished_run

SHAPES = ("bert", "elastic")


def load_run(run_dir: Path) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    cfg, weights = finished_run(run_dir)
    tensors = load_file(str(weights))
    if not any(k.startswith("backbone.") and ".emb" not in k for k in tensors):
        raise ConfigError(f"run '{run_dir}' ({cfg.algorithm}, model.finetune="
                          f"{cfg.model.finetune}) holds no backbone weights to cut; export runs "
                          "of raffm, heterofl, or fedavg with model.finetune=full.")
    if any(k.endswith((".lora_A", ".lora_B")) for k in tensors):
        raise ConfigError(f"run '{run_dir}' holds unmerged LoRA tensors; export needs merged "
                          "weights (raffm / heterofl / fedavg with model.finetune=full).")
    return cfg, tensors


@torch.inference_mode()
def export(run_dir: str | Path, budget: float, out: str | Path, shape: str = "bert",
           overwrite: bool = False, repeats: int = 5, batch: int = 32,
           threads: int | None = None) -> dict[str, Any]:
    """Cut, write and measure a `budget`-sized export of a run; returns the report.

    threads: intra-op threads for the timing (default: the run's train.threads). On a loaded
    machine 1 thread gives steadier ratios (multi-thread barriers stall when cores are shared).
    """
    from fedfm.sim.world import build_world, set_threads

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"'{out}' is not empty; pass --overwrite to replace it.")
    cfg, tensors = load_run(run_dir)
    set_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    world = build_world(cfg)
    return _export_hf(cfg, tensors, world, run_dir, out, budget, shape, overwrite, repeats, batch)


def _export_hf(cfg, tensors, world, run_dir: Path, out: Path, budget: float, shape: str,
               overwrite: bool, repeats: int, batch: int) -> dict[str, Any]:
    from fedfm.export.hf import export_hf, measure_hf

    if shape not in SHAPES:
        raise ConfigError(f"--shape must be one of {', '.join(SHAPES)}, not '{shape}'.")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    report, sub, predict = export_hf(cfg, tensors, world, run_dir, out, budget, shape)
    report.update(measure_hf(predict, sub, world.model.eval(), world, cfg, repeats, batch,
                             shape))
    (out / "fedfm_export.json").write_text(json.dumps(report, indent=2))
    return report
