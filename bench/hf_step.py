"""MiniLM LoRA step through transformers' BertModel, attention variants side by side, one process.

The `legacy` variant (fedfm's hand-written models/bert.py) was measured here for issue #12
(bench/reports/hf_step.json); that BERT is deleted, so the variant is gone (commit a54224a and
earlier run it). Variants (same weights, same batch, LoRA r=8 on query/value, fedfm's train_local
step = forward + backward + clip + AdamW, 1 thread):
  hf-sdpa       transformers' BertModel with its default SDPA attention
  hf            transformers' BertModel with fedfm_sdpa (what fedfm uses: SDPA in fp32 on CPU)
                and the shared block inputs cast to bf16 once (attention.cast_shared_inputs)
  hf-nocast     as hf without the shared-input cast (autocast casts per projection)
  hf-frozen-bf16  as hf, frozen backbone weights stored in bf16 (what fedfm does on CUDA; on the
                CPU fedfm keeps fp32 weights: --variants to include it)
Times are best-of CPU time (robust on a shared machine: waiting for a core is not counted),
variants interleaved round-robin. FLOPs counted by torch.utils.flop_counter on one step; P3 =
bf16 step FLOP/s as % of the best bf16 (n x n) GEMM (n = 1024, 2048), CPU time, same process.

  python bench/hf_step.py [--batch 16] [--seq 128] [--repeats 5] [--out bench/reports/hf_step.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedfm.algorithms.training import cross_entropy_loss, param_groups, train_local
from fedfm.config import TrainConfig
from fedfm.data.federated import Split
from fedfm.models.classifier import Classifier, freeze
from fedfm.models.finetune import configure_finetune
from fedfm.models.hf.loading import load_hf_backbone
from fedfm.models.loading import minilm_path
from fedfm.sim.probe import matmul_gflops

ROOT = Path(__file__).resolve().parents[1]


def build(kind: str) -> Classifier:
    backbone = load_hf_backbone(minilm_path(), sdpa_fp32=(kind != "hf-sdpa"))
    freeze(backbone)
    model = Classifier(backbone, 5, "mean", 0)
    configure_finetune(model, "lora", ("query", "value"), 8, 16.0, 0)
    if kind == "hf-frozen-bf16":
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    if kind == "hf-nocast":  # before the shared-input cast (models/hf/attention.py)
        for h in backbone.cast_hooks:
            h.remove()
    if kind == "hf-eager":  # transformers' eager attention (matmul + softmax), for comparison
        backbone.base.set_attn_implementation("eager")
    return model


def make_split(n: int, seq: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, seq), generator=g)
    return Split(ids, torch.ones(n, seq, dtype=torch.long), torch.randint(0, 5, (n,), generator=g))


def one_step(model, split, precision, batch) -> float:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    cfg = TrainConfig(batch_size=batch, lr=1e-4, max_steps=1, precision=precision)
    c0 = time.process_time()
    train_local(param_groups(named, 1e-4, None), split, cross_entropy_loss(model), cfg,
                torch.Generator().manual_seed(0))
    return time.process_time() - c0


def bf16_peak(repeats: int = 5, inner: int = 4) -> float:
    """Best bf16 GEMM GFLOP/s (CPU time); each timing spans `inner` products (>= 0.1 s) so the
    CPU-time clock's granularity does not inflate it."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
        a @ b
        k = inner * (8 if n == 1024 else 1)
        for _ in range(repeats):
            c0 = time.process_time()
            for _ in range(k):
                a @ b
            best = max(best, k * 2 * n**3 / max(time.process_time() - c0, 1e-9) / 1e9)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "reports" / "hf_step.json"))
    p.add_argument("--variants", default="hf-sdpa,hf")
    args = p.parse_args()
    torch.set_num_threads(1)
    split = make_split(args.batch, args.seq)
    models = {k: build(k) for k in args.variants.split(",")}
    diff = None
    if "hf" in models and "hf-sdpa" in models:
        with torch.no_grad():  # same function: fp32 attention vs transformers' own SDPA
            ids, mask = split.input_ids[:4], split.attention_mask[:4]
            diff = float((models["hf"](ids, mask) - models["hf-sdpa"](ids, mask)).abs().max())
    peak_before = bf16_peak()
    res: dict = {"batch": args.batch, "seq": args.seq, "threads": 1, "max_logit_diff": diff}
    for prec in ("bf16", "fp32"):
        for k, m in models.items():
            if prec == "fp32" and "bf16" in k:
                continue
            with FlopCounterMode(display=False) as fc:
                one_step(m, split, prec, args.batch)
            res[f"{k}/{prec}"] = {"flops": fc.get_total_flops(), "times": []}
        for _ in range(args.repeats):  # interleaved
            for k, m in models.items():
                if f"{k}/{prec}" in res:
                    res[f"{k}/{prec}"]["times"].append(one_step(m, split, prec, args.batch))
    peak = max(peak_before, bf16_peak())
    res["bf16_peak_gflops_cpu_time"] = peak
    # bench/step_throughput.py's peak (issue #9's 58.8 %): one wall-clock-timed product, best of 10
    res["bf16_peak_gflops_probe_wall"] = max(matmul_gflops(n, 10, torch.bfloat16)
                                             for n in (1024, 2048))
    for r in list(res.values()):
        if isinstance(r, dict):
            r["step_cpu_s"] = min(r["times"])
            r["gflops"] = r["flops"] / r["step_cpu_s"] / 1e9
            r["pct_bf16_peak"] = 100 * r["gflops"] / peak
    for prec in ("bf16", "fp32"):
        if f"hf/{prec}" in res and f"hf-sdpa/{prec}" in res:
            res[f"hf_vs_hf_sdpa_time_{prec}"] = (res[f"hf/{prec}"]["step_cpu_s"]
                                                 / res[f"hf-sdpa/{prec}"]["step_cpu_s"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"{k:14s} step {v['step_cpu_s']:.3f} s  {v['gflops']:.1f} GFLOP/s  "
                  f"{v['pct_bf16_peak']:.1f} % of bf16 peak")
        else:
            print(k, v)


if __name__ == "__main__":
    main()
