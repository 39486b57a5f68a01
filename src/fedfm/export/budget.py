"""`fedfm export RUN_DIR --budget B --out DIR`: cut a deployable subnetwork out of a trained run.

The run's final super-network (final/global.safetensors: every block + the head) is reordered by
SPP (function-preserving; skipped for heterofl runs, whose prefixes were trained as they are),
sized to the budget (fraction of the blocks' parameters) and written as a standalone Hugging
Face folder:

    config.json                  a vanilla BertConfig ("model_type": "bert")
    model.safetensors            embeddings + blocks (+ an identity pooler, unused by fedfm)
    classifier_head.safetensors  the classification head: logits = W · mean_pool(h) + b
    fedfm_export.json            pooling, labels, widths and the measured report below
    tokenizer files              copied from the source model

Shapes (`--shape`):
    bert     all heads kept, the FFN (intermediate_size) cut to fit. transformers 5 fixes BERT's
             head size at hidden / num_heads and no longer supports `pruned_heads`, so fewer
             heads cannot be expressed in a vanilla BertConfig; the FFN can.
             `transformers.AutoModel.from_pretrained(DIR)` loads it with no fedfm code.
    elastic  the RaFFM subnetwork as trained (fewer heads and FFN neurons per block). Its
             config adds `fedfm_heads` / `fedfm_ffn` / `fedfm_head_dim`; fedfm loads it
             (`model.name=hf model.path=DIR`), vanilla transformers cannot.

Report: parameters, forward FLOPs per example (at model.max_length), latency per example of the
export and of the full model timed side by side, and global-test accuracy of both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedfm.config import RunConfig, build_config
from fedfm.core.errors import ConfigError
from fedfm.export.measure import accuracy_of, latencies
from fedfm.models.bert import Bert, EncoderSpec
from fedfm.models.classifier import Classifier, mean_pool, set_tensors
from fedfm.models.elastic import Widths, backbone_tensors, build_subnetwork, extract, spp
from fedfm.models.sizing import CostModel, _widest_ffn, embedding_params, largest_uniform

SHAPES = ("bert", "elastic")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


def load_run(run_dir: Path) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    cfg_path, weights = run_dir / "config.json", run_dir / "final" / "global.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ConfigError(f"'{run_dir}' is not a finished run folder (needs config.json and "
                          "final/global.safetensors).")
    cfg = build_config(json.loads(cfg_path.read_text()))
    tensors = load_file(str(weights))
    if not any(k.startswith("backbone.") and ".emb" not in k for k in tensors):
        raise ConfigError(f"run '{run_dir}' ({cfg.algorithm}, model.finetune="
                          f"{cfg.model.finetune}) holds no backbone weights to cut; export runs "
                          "of raffm, heterofl, or fedavg with model.finetune=full.")
    if any(k.endswith((".lora_A", ".lora_B")) for k in tensors):
        raise ConfigError(f"run '{run_dir}' holds unmerged LoRA tensors; export needs merged "
                          "weights (raffm / heterofl / fedavg with model.finetune=full).")
    return cfg, tensors


def export_widths(spec: EncoderSpec, budget: float, shape: str) -> Widths:
    """Uniform widths within `budget` (fraction of block params) for the export shape."""
    if not 0 < budget <= 1:
        raise ConfigError(f"--budget must be in (0, 1], got {budget}.")
    if shape not in SHAPES:
        raise ConfigError(f"--shape must be one of {', '.join(SHAPES)}, not '{shape}'.")
    cm = CostModel(spec, "params")
    if shape == "elastic":
        return largest_uniform(cm, budget)
    cap = budget * cm.cost(Widths.of(spec)) * (1 + 1e-12)
    f = _widest_ffn(cm, max(spec.heads), cap)
    if f is None:
        attn = cm.fraction(Widths.uniform(spec.num_layers, max(spec.heads), 1))
        raise ConfigError(f"--budget {budget:g} is below what --shape bert can reach (all heads "
                          f"kept: >= {attn:.3f}); use a larger budget or --shape elastic.")
    return Widths.uniform(spec.num_layers, max(spec.heads), f)


def hf_config(spec: EncoderSpec, w: Widths, shape: str) -> dict[str, Any]:
    cfg = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden, "num_hidden_layers": spec.num_layers,
        "num_attention_heads": max(spec.heads) if shape == "bert" else spec.hidden // spec.head_dim,
        "intermediate_size": max(w.ffn), "hidden_act": "gelu",
        "max_position_embeddings": spec.max_position, "type_vocab_size": spec.type_vocab,
        "layer_norm_eps": spec.eps, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "pad_token_id": 0, "initializer_range": 0.02,
    }
    if shape == "elastic":
        cfg.update(fedfm_heads=list(w.heads), fedfm_ffn=list(w.ffn), fedfm_head_dim=spec.head_dim)
    return cfg


def backbone_state(model: Bert) -> dict[str, torch.Tensor]:
    """Keys as HF BertModel's, plus an identity pooler so nothing is left uninitialised."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    h = model.spec.hidden
    state["pooler.dense.weight"], state["pooler.dense.bias"] = torch.eye(h), torch.zeros(h)
    return state


def tokenizer_folder(cfg: RunConfig) -> Path | None:
    from fedfm.models.loading import minilm_path

    if cfg.model.name == "hf" and cfg.model.path:
        return Path(cfg.model.path)
    try:
        return minilm_path()
    except ConfigError:
        return None


def write_folder(out: Path, sub: Classifier, config: dict, meta: dict, cfg: RunConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(backbone_state(sub.backbone), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    head = {k: v.detach().contiguous().clone() for k, v in sub.head.state_dict().items()}
    save_file(head, str(out / "classifier_head.safetensors"))
    src = tokenizer_folder(cfg)
    for name in TOKENIZER_FILES if src else ():
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    (out / "fedfm_export.json").write_text(json.dumps(meta, indent=2))


def hf_full(full: Classifier):
    """The full model loaded exactly as the export is (AutoModel from a saved folder)."""
    import tempfile

    spec = full.backbone.spec
    folder = Path(tempfile.mkdtemp(prefix="fedfm_full_"))
    (folder / "config.json").write_text(json.dumps(hf_config(spec, Widths.of(spec), "bert")))
    save_file(backbone_state(full.backbone), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    try:
        return hf_classifier(folder, full.head)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def hf_classifier(folder: Path, head: torch.nn.Linear):
    """The export as a user would load it: AutoModel + mean pooling + the saved head."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder)).eval()

    def predict(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        return head(mean_pool(h, mask))

    return predict


def cut(full: Classifier, tensors: dict[str, torch.Tensor], w: Widths,
        spp_first: bool = True) -> Classifier:
    """The subnetwork of widths `w` (after SPP) as a Classifier sharing `full`'s embeddings."""
    spec = full.backbone.spec
    ordered = spp(tensors, spec.head_dim) if spp_first else tensors
    sub_t = extract(ordered, w, spec.head_dim)
    emb = {k: v for k, v in full.backbone.state_dict().items() if k.startswith("embeddings.")}
    blocks = {k: v for k, v in backbone_tensors(sub_t).items() if k.startswith("encoder.")}
    sub = Classifier(build_subnetwork(w.spec(spec), blocks, emb), full.head.out_features,
                     full.pooling)
    set_tensors(sub, {k: v for k, v in sub_t.items() if k.startswith("head.")})
    return sub


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
    full = world.model
    if hasattr(full.backbone, "family"):  # a Hugging Face family (model.name = "hf")
        return _export_hf(cfg, tensors, world, run_dir, out, budget, shape, overwrite, repeats,
                          batch)
    set_tensors(full, {k: v for k, v in tensors.items() if not k.startswith("backbone.emb")})
    spec = full.backbone.spec
    w = export_widths(spec, budget, shape)
    sub = cut(full, tensors, w, spp_first=cfg.algorithm != "heterofl")
    sub.eval(), full.eval()
    cm_p = CostModel(spec, "params")
    cm_f = CostModel(spec, "flops", seq=cfg.model.max_length)
    report: dict[str, Any] = {
        "run": str(run_dir), "algorithm": cfg.algorithm, "budget": budget, "shape": shape,
        "heads": list(w.heads), "ffn": list(w.ffn),
        "block_params": cm_p.params(w), "block_params_full": cm_p.params(Widths.of(spec)),
        "params_fraction": round(cm_p.fraction(w), 4),
        "total_params": cm_p.params(w) + embedding_params(spec) + sum(
            p.numel() for p in sub.head.parameters()),
        "flops_per_example": cm_f.flops(w), "flops_per_example_full": cm_f.flops(Widths.of(spec)),
        "seq_len": cfg.model.max_length, "pooling": full.pooling,
        "labels": world.data.label_names, "threads": torch.get_num_threads(),
    }
    config = hf_config(spec, w, shape)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    write_folder(out, sub, config, report, cfg)
    report.update(measure(out, sub, full, world, cfg, shape, repeats, batch))
    (out / "fedfm_export.json").write_text(json.dumps(report, indent=2))
    return report


def measure(out: Path, sub: Classifier, full: Classifier, world, cfg: RunConfig, shape: str,
            repeats: int, batch: int) -> dict[str, Any]:
    """Accuracy (global test) and side-by-side latency of the export vs the full model."""
    test = world.data.global_test
    exported = hf_classifier(out, sub.head) if shape == "bert" else sub
    reference = hf_full(full) if shape == "bert" else full  # same implementation as the export
    ids = test.input_ids[:batch]
    mask = torch.ones_like(ids)  # full-length sequences: latency at seq = model.max_length
    lat = latencies({"export": exported, "full": reference}, ids, mask, repeats)
    with torch.inference_mode():
        probe = test.input_ids[:8], test.attention_mask[:8]
        gap = float((exported(*probe) - sub(*probe)).abs().max())
    return {
        "loaded_with": "transformers.AutoModel" if shape == "bert" else "fedfm",
        "timed_with": "transformers BertModel (both)" if shape == "bert" else "fedfm Bert (both)",
        "max_abs_diff_vs_fedfm": gap,
        "acc_export": accuracy_of(exported, test, cfg), "acc_full": accuracy_of(full, test, cfg),
        "latency_ms_per_example": round(1e3 * lat["export"], 4),
        "latency_ms_per_example_full": round(1e3 * lat["full"], 4),
        "speedup": round(lat["full"] / lat["export"], 3), "latency_batch": int(ids.shape[0]),
    }


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
