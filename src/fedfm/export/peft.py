"""`fedfm export RUN_DIR --format peft|merged --out DIR`: a run's final global LoRA in the formats
the Hugging Face ecosystem loads.

peft    adapter_config.json + adapter_model.safetensors (keys `base_model.model.<module>.lora_A
        .weight`, A (r, in), B (out, r), scaling lora_alpha / r — fedfm's LoRA math exactly), so

            base = AutoModelForCausalLM.from_pretrained(BASE)   # task = generate
            base = AutoModel.from_pretrained(BASE)              # task = classify
            model = peft.PeftModel.from_pretrained(base, DIR)

        gives fedfm's outputs. `target_modules` lists the exact module names, so an adapter on
        some blocks only (SAL) loads as trained. Classification adds classifier_head.safetensors
        (`logits = W · pool(h) + b`) and fedfm_head.json (pooling, labels): the head is not part
        of the HF base model, so it is a separate file rather than a `modules_to_save` module.
merged  the HF model with every LoRA folded into its weights (W += (alpha / r) B A), saved with
        `save_pretrained` (+ tokenizer, + the head files for classification); loads with
        AutoModelForCausalLM / AutoModel and no fedfm or peft code.

Both write fedfm_export.json with the largest |difference| between the export (loaded back as a
user would) and fedfm's final model on a few test examples, when peft/transformers can check it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fedfm.config import RunConfig
from fedfm.core.errors import ConfigError
from fedfm.export import finished_run
from fedfm.models.lora import LoRAConv1D, LoRALinear

FORMATS = ("peft", "merged")
LEGACY = ("raffm", "heterofl", "fedmoe", "randommoe")  # the budget export (fedfm.export.budget) is theirs


def load_run(run_dir: Path) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    cfg, weights = finished_run(run_dir)
    if cfg.algorithm in LEGACY:
        raise ConfigError(f"run '{run_dir}' is a {cfg.algorithm} run: export its subnetworks "
                          "with `fedfm export RUN_DIR --budget B --out DIR` (format budget).")
    tensors = load_file(str(weights))
    if not tensors:
        raise ConfigError(f"run '{run_dir}' ({cfg.algorithm}) has no global model to export: "
                          "its trained tensors stay on the clients (personalised algorithm).")
    return cfg, tensors


def hf_model(model: nn.Module, task: str) -> nn.Module:
    """The transformers model a user loads: the *ForCausalLM (generate) or the base model."""
    return model.lm if task == "generate" else model.backbone.base


def lora_layers(root: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in root.named_modules() if isinstance(m, LoRALinear)}


def peft_state(root: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(adapter tensors with PEFT's key names, adapter_config fields) for the LoRA in `root`."""
    layers = {n: m for n, m in lora_layers(root).items() if m.active}
    if not layers:
        raise ConfigError("the run's model carries no active LoRA: nothing to export as an "
                          "adapter (model.finetune = full/head runs: use --format merged).")
    ranks = {m.rank for m in layers.values()}
    scales = {round(m.scale, 12) for m in layers.values()}
    if len(ranks) != 1 or len(scales) != 1:
        raise ConfigError("LoRA ranks differ between layers; PEFT adapters need one rank.")
    state = {}
    for name, m in layers.items():
        state[f"base_model.model.{name}.lora_A.weight"] = m.lora_A.detach().contiguous().clone()
        state[f"base_model.model.{name}.lora_B.weight"] = m.lora_B.detach().contiguous().clone()
    r = ranks.pop()
    fields = {"r": r, "lora_alpha": scales.pop() * r, "target_modules": sorted(layers),
              "fan_in_fan_out": any(isinstance(m, LoRAConv1D) for m in layers.values())}
    return state, fields


def adapter_config(fields: dict[str, Any], base_path: str, task: str) -> dict[str, Any]:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if task == "generate" else None,
        "base_model_name_or_path": base_path, "revision": None, "inference_mode": True,
        "r": fields["r"], "lora_alpha": fields["lora_alpha"], "lora_dropout": 0.0,
        "target_modules": fields["target_modules"], "fan_in_fan_out": fields["fan_in_fan_out"],
        "bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
    }


def unwrap_lora(root: nn.Module) -> None:
    """Fold every LoRA into its base weight and put plain Linear / Conv1D modules back."""
    for name, m in list(lora_layers(root).items()):
        if m.active:
            m.merge()
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        if isinstance(m, LoRAConv1D):
            from transformers.pytorch_utils import Conv1D

            plain = Conv1D(m.weight.shape[1], m.weight.shape[0])
        else:
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                              device="meta")
        plain.weight = m.weight
        if m.bias is not None:
            plain.bias = m.bias
        setattr(parent, child, plain)


def write_head(out: Path, model: nn.Module, labels: list[str]) -> None:
    head = {k: v.detach().contiguous().clone() for k, v in model.head.state_dict().items()}
    save_file(head, str(out / "classifier_head.safetensors"))
    (out / "fedfm_head.json").write_text(json.dumps(
        {"pooling": model.pooling, "labels": labels, "logits": "W · pool(h) + b"}, indent=2))


def _probe(world, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    split = world.data.global_test
    ids, mask = split.input_ids[:n], split.attention_mask[:n]
    t = int(mask.sum(1).max())
    return ids[:, :t], mask[:, :t]


@torch.inference_mode()
def outputs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, task: str) -> torch.Tensor:
    """fedfm's output to compare: LM logits (generate) or class logits (classify)."""
    model.eval()
    return model(ids, mask).float()


@torch.inference_mode()
def loaded_outputs(out: Path, fmt: str, base: str, model: nn.Module, ids, mask, task: str):
    """The export loaded back as a user would; None when peft is missing for --format peft."""
    import transformers as tf

    cls = tf.AutoModelForCausalLM if task == "generate" else tf.AutoModel
    kw = {"use_safetensors": True, "local_files_only": True}
    if fmt == "peft":
        try:
            from peft import PeftModel
        except ImportError:
            return None
        hf = PeftModel.from_pretrained(cls.from_pretrained(base, **kw), str(out)).eval()
    else:
        hf = cls.from_pretrained(str(out), **kw).eval()
    res = hf(input_ids=ids, attention_mask=mask)
    if task == "generate":
        return res.logits.float()
    from fedfm.models.classifier import pool

    return model.head(pool(res.last_hidden_state, mask, model.pooling)).float()


def export_hf(run_dir: str | Path, out: str | Path, fmt: str = "peft",
              overwrite: bool = False) -> dict[str, Any]:
    """Write the run's final global model as a PEFT adapter or a merged HF folder; returns the
    report (also written to DIR/fedfm_export.json)."""
    from fedfm.algorithms.tasks import task_of
    from fedfm.models.classifier import set_tensors
    from fedfm.models.loading import hf_folder
    from fedfm.models.registry import get as get_model
    from fedfm.sim.world import build_world

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of budget, {', '.join(FORMATS)}, not '{fmt}'.")
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"'{out}' is not empty; pass --overwrite to replace it.")
    cfg, tensors = load_run(run_dir)
    task, m = task_of(cfg), cfg.model
    if fmt == "peft" and m.num_layers is not None:
        raise ConfigError(f"the run kept only the first {m.num_layers} blocks of its model; a "
                          "PEFT adapter attaches to the full base model. Use --format merged.")
    base = None if get_model(m.name).build else str(hf_folder(m.name, m.path))
    if fmt == "peft" and base is None:
        raise ConfigError("model.name = 'tiny-bert' is random, with no base folder for an "
                          "adapter to attach to; use --format merged.")
    world = build_world(cfg)
    model = world.model
    set_tensors(model, tensors)
    ids, mask = _probe(world)
    reference = outputs(model, ids, mask, task)
    root = hf_model(model, task)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if fmt == "peft":
        state, fields = peft_state(root)
        save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        (out / "adapter_config.json").write_text(
            json.dumps(adapter_config(fields, base, task), indent=2))
    else:
        unwrap_lora(root)
        root.save_pretrained(str(out))
        tok = getattr(model, "tokenizer", None) or _tokenizer(base)
        if tok is not None:
            tok.save_pretrained(str(out))
    if task != "generate":
        write_head(out, model, world.data.label_names)
    got = loaded_outputs(out, fmt, base, model, ids, mask, task)
    report = {"run": str(run_dir), "format": fmt, "task": task, "algorithm": cfg.algorithm,
              "base_model": base, "out": str(out),
              "max_abs_diff_vs_fedfm": None if got is None else float((got - reference).abs().max()),
              "checked_with": None if got is None else ("peft.PeftModel" if fmt == "peft" else
                                                        "transformers.AutoModel*")}
    (out / "fedfm_export.json").write_text(json.dumps(report, indent=2))
    return report


def _tokenizer(base: str | None):
    if base is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base, local_files_only=True)
