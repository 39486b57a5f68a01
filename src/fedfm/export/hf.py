"""`fedfm export` for runs on Hugging Face families (model.name = "hf"): Llama, Qwen2/3, Mistral,
Gemma, GPT-2, BERT, RoBERTa, ... (every registered family).

The run's final super-network (blocks, final norm, head; fused projections in canonical form) is
reordered by SPP (skipped for heterofl), sized to the budget (fraction of the blocks' parameters,
counted by `HFCost` on the family's own role shapes) and written as:

  --shape bert (default) = a standard config of the run's own family, uniform widths:
      `num_attention_heads` = g · n_rep, `num_key_value_heads` = g, `head_dim` written
      explicitly, `intermediate_size` (GPT-2: `n_inner`) = f. Families whose config fixes the
      head size at hidden / heads (BERT, RoBERTa, DistilBERT, GPT-2: no `head_dim` field) keep
      every head and cut the FFN only. Loads with `AutoModel.from_pretrained(DIR)` alone.
  --shape elastic = per-layer widths as trained: the full config plus `fedfm_groups` /
      `fedfm_ffn` per layer and the sliced weights; `load_elastic(DIR)` rebuilds it (fedfm).

Both add classifier_head.safetensors (logits = W · pool(h) + b, pool in fedfm_export.json) and
the measured report (params, FLOPs, side-by-side latency, accuracy of export and full model).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedfm.core.errors import ConfigError
from fedfm.export.measure import accuracy_of, latencies
from fedfm.models.classifier import pool, set_tensors
from fedfm.models.elastic import Widths
from fedfm.models.hf_elastic import Geometry, extract, fuse, split_fused, spp, subnetwork
from fedfm.models.hf_raffm import HFCost, frozen_params, geometry_of, server_tensors
from fedfm.models.sizing import _widest_ffn, largest_uniform


def head_cuts_allowed(family) -> bool:
    """A standard config can hold fewer heads of the same size only with a `head_dim` field."""
    return family.head_dim is not None


def export_widths(cost: HFCost, family, budget: float, shape: str) -> Widths:
    if not 0 < budget <= 1:
        raise ConfigError(f"--budget must be in (0, 1], got {budget}.")
    if shape == "elastic" or head_cuts_allowed(family):
        return largest_uniform(cost, budget)
    s = cost.spec
    cap = budget * cost.cost(Widths.of(s)) * (1 + 1e-12)
    f = _widest_ffn(cost, max(s.heads), cap)
    if f is not None and family.ffn == "mlp_ratio":  # DINOv2: FFN = hidden x an integer ratio
        f = (f // cost.hidden) * cost.hidden or None
    if f is None:
        floor = cost.fraction(Widths.uniform(s.num_layers, max(s.heads), 1))
        raise ConfigError(f"--budget {budget:g} is below what a standard '{family.name}' config "
                          f"can reach (all heads kept: >= {floor:.3f}); use a larger budget or "
                          "--shape elastic.")
    return Widths.uniform(s.num_layers, max(s.heads), f)


def standard_config(config, family, geo: Geometry, w: Widths) -> dict[str, Any]:
    """The family's own config with the uniform widths written in (head_dim explicit)."""
    d = config.to_dict()
    g, f = w.heads[0], w.ffn[0]
    d[family.num_heads] = g * geo.n_rep
    if family.num_kv_heads:
        d[family.num_kv_heads] = g
    if family.head_dim:
        d[family.head_dim] = geo.head_dim
    if family.ffn == "mlp_ratio":  # DINOv2: FFN = hidden * mlp_ratio, an integer ratio
        d["mlp_ratio"] = f // d[family.hidden]
    else:
        d[family.ffn if family.ffn in d else "intermediate_size"] = f
    d.pop("_name_or_path", None)
    return d


def base_state(sub) -> dict[str, torch.Tensor]:
    """The subnetwork's HF base-model tensors (native names), contiguous copies."""
    return {k: v.detach().contiguous().clone() for k, v in sub.backbone.base.state_dict().items()}


def source_pooler(source: Path | None) -> dict[str, torch.Tensor]:
    """The source checkpoint's pooler (dense H x H: never cut), which fedfm drops at load
    (it pools itself) but a standard export should carry (ViT, BERT)."""
    from transformers import AutoModel

    if source is None:
        return {}
    try:
        src = AutoModel.from_pretrained(str(source), use_safetensors=True, local_files_only=True)
    except (OSError, ValueError):
        return {}
    pooler = getattr(src, "pooler", None)
    return {f"pooler.{k}": v for k, v in pooler.state_dict().items()} if pooler else {}


def write_standard(out: Path, full, sub, family, geo: Geometry, w: Widths,
                   source: Path | None = None) -> None:
    from transformers import AutoModel

    config = type(full.backbone.config).from_dict(standard_config(full.backbone.config, family,
                                                                  geo, w))
    model = AutoModel.from_config(config)
    state = base_state(sub)
    if any(k.startswith("pooler.") for k in model.state_dict()):  # the checkpoint's own
        state.update(source_pooler(source))
    if "pooler.dense.weight" in model.state_dict() and "pooler.dense.weight" not in state:
        h = config.hidden_size  # no source pooler (unused by fedfm): identity, nothing random
        state["pooler.dense.weight"], state["pooler.dense.bias"] = torch.eye(h), torch.zeros(h)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ConfigError(f"export config does not match the cut weights "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.save_pretrained(str(out), safe_serialization=True)


def write_elastic(out: Path, full, sub, w: Widths) -> None:
    d = full.backbone.config.to_dict()
    d.update(fedfm_groups=list(w.heads), fedfm_ffn=list(w.ffn))
    d.pop("_name_or_path", None)
    (out / "config.json").write_text(json.dumps(d, indent=2))
    save_file(base_state(sub), str(out / "model.safetensors"), metadata={"format": "pt"})


def load_elastic(folder: str | Path):
    """An elastic export as an HF base model of per-layer widths (fedfm code needed)."""
    from transformers import AutoConfig, AutoModel

    from fedfm.models.hf.backbone import HFBackbone
    from fedfm.models.hf_raffm import geometry_of as _geo

    folder = Path(folder)
    meta = json.loads((folder / "config.json").read_text())
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    base = AutoModel.from_config(config)
    holder = torch.nn.Module()
    holder.backbone = HFBackbone(base)
    geo = _geo(holder)
    w = Widths(tuple(meta["fedfm_groups"]), tuple(meta["fedfm_ffn"]))
    tensors = split_fused({f"backbone.{k}": v for k, v in
                           load_file(str(folder / "model.safetensors")).items()}, geo)
    return subnetwork(holder, geo, w, tensors).backbone.base.eval()


def cut(full, tensors, geo: Geometry, w: Widths, spp_first: bool):
    ordered = spp(tensors, geo) if spp_first else tensors
    return subnetwork(full, geo, w, extract(ordered, geo, w)).eval()


def export_hf(cfg, tensors: dict[str, torch.Tensor], world, run_dir: Path, out: Path,
              budget: float, shape: str) -> tuple[dict[str, Any], Any, Any]:
    """Cut and write; returns (report, sub Classifier, predict fn of the export as loaded)."""
    full = world.model
    geo = geometry_of(full)
    tensors = split_fused(tensors, geo)
    held = server_tensors(full, geo)
    set_tensors(full, fuse({k: v for k, v in tensors.items() if k in held}, geo))
    family = full.backbone.family
    hidden = full.backbone.spec.hidden
    frozen = frozen_params(full, geo)
    cost = HFCost(geo, server_tensors(full, geo), frozen, hidden, "params")
    w = export_widths(cost, family, budget, shape)
    sub = cut(full, server_tensors(full, geo), geo, w, cfg.algorithm != "heterofl")
    out.mkdir(parents=True, exist_ok=True)
    (write_elastic(out, full, sub, w) if shape == "elastic"
     else write_standard(out, full, sub, family, geo, w, model_folder(cfg)))
    save_file({k: v.detach().contiguous() for k, v in sub.head.state_dict().items()},
              str(out / "classifier_head.safetensors"))
    copy_tokenizer(cfg, out)
    seq = cfg.model.max_length
    if family.inputs == "pixels":  # tokens per image: patches + [CLS] (+ distillation token)
        seq = int(full.backbone.prefix(*world.data.global_test.rows(torch.arange(1)), 0).shape[1])
    flops = HFCost(geo, server_tensors(full, geo), frozen, hidden, "flops", seq)
    full_w = Widths.of(cost.spec)
    report = {
        "run": str(run_dir), "algorithm": cfg.algorithm, "budget": budget,
        "shape": "standard" if shape != "elastic" else "elastic", "family": family.name,
        "groups": list(w.heads), "q_heads": [g * geo.n_rep for g in w.heads],
        "heads": [g * geo.n_rep for g in w.heads],  # the field MiniLM exports always had
        "ffn": list(w.ffn), "block_params": cost.params(w), "block_params_full": cost.params(full_w),
        "params_fraction": round(cost.fraction(w), 4),
        "total_params": cost.params(w) + frozen + sum(p.numel() for p in sub.head.parameters()),
        "flops_per_example": flops.flops(w), "flops_per_example_full": flops.flops(full_w),
        "seq_len": seq, "pooling": full.pooling,
        "labels": world.data.label_names, "threads": torch.get_num_threads(),
    }
    return report, sub, predictor(out, sub, full.pooling, shape, family.inputs == "pixels")


def predictor(out: Path, sub, pooling: str, shape: str, pixels: bool = False):
    """The export as a user would load it: AutoModel (standard) / load_elastic + pool + head."""
    from transformers import AutoModel

    model = (load_elastic(out) if shape == "elastic" else
             AutoModel.from_pretrained(str(out), use_safetensors=True,
                                       local_files_only=True).eval())
    head = sub.head

    def predict(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if pixels:  # vision families: ids = pixel_values (B, C, H, W)
            h = model(pixel_values=ids).last_hidden_state  # (B, T, H)
        else:
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        return head(pool(h, mask, pooling))

    return predict


def model_folder(cfg) -> Path | None:
    """The run's source model folder (None for models built in memory, e.g. tiny-bert)."""
    from fedfm.models.loading import hf_folder

    try:
        return hf_folder(cfg.model.name, cfg.model.path)
    except ConfigError:
        return None


def copy_tokenizer(cfg, out: Path) -> None:
    """The tokenizer (text) or image processor (vision) files of the run's model folder."""
    src = model_folder(cfg)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt", "vocab.json", "merges.txt", "preprocessor_config.json"):
        if src is not None and (src / name).is_file():
            shutil.copy(src / name, out / name)


def measure_hf(predict, sub, full, world, cfg, repeats: int, batch: int, shape: str) -> dict[str, Any]:
    """Accuracy (global test) of the export as loaded and of the full model; latency per
    example of both, timed interleaved (same transformers implementation)."""
    test = world.data.global_test
    ids = test.input_ids[:batch]
    mask = torch.ones_like(ids)  # full-length sequences: latency at seq = model.max_length
    if test.is_image:  # an image's mask is (B, 1): no padding
        mask = torch.ones(ids.shape[0], 1, dtype=torch.long)
    lat = latencies({"export": predict, "full": full}, ids, mask, repeats)
    with torch.inference_mode():
        probe = test.input_ids[:8], test.attention_mask[:8]
        gap = float((predict(*probe) - sub(*probe)).abs().max())
    return {
        "loaded_with": "transformers.AutoModel" if shape != "elastic" else
                       "fedfm.export.hf.load_elastic",
        "timed_with": "transformers modules (both)",
        "max_abs_diff_vs_fedfm": gap,
        "acc_export": accuracy_of(predict, test, cfg), "acc_full": accuracy_of(full, test, cfg),
        "latency_ms_per_example": round(1e3 * lat["export"], 4),
        "latency_ms_per_example_full": round(1e3 * lat["full"], 4),
        "speedup": round(lat["full"] / lat["export"], 3), "latency_batch": int(ids.shape[0]),
    }
