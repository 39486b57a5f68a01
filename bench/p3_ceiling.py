"""P3: the bf16 LoRA step against the big-GEMM peak AND against the peak at its own GEMM shapes.

One fedfm `train_local` step (MiniLM LoRA r=8 q/v, batch x seq, bf16 autocast, 1 thread) is
recorded once under a dispatch mode that logs every matrix product (mm, addmm, bmm, baddbmm)
with its shapes and strides; each distinct product is then replayed alone, in bf16, with the
same layout, and timed (CPU time, best of `--repeats`). That gives two ceilings:

    big-GEMM peak   = best bf16 (n x n) @ (n x n) GFLOP/s, n in {1024, 2048}
    shape-matched   = sum_i flops_i / sum_i t_i   over the step's products i, each t_i its
                      best isolated time: the step could not run faster than this even if
                      every non-GEMM op (casts, softmax, GELU, LayerNorm, AdamW) cost nothing.

The step's FLOPs are counted analytically from the model (forward: 2·tokens·(every Linear's
in·out) + attention 4·B·heads·T²·d_head; backward w.r.t. activations = forward again, plus the
LoRA weight gradients), the same number for every variant, so a variant that moves attention
from a fused kernel to bmm's is not credited with more FLOPs.

    python bench/p3_ceiling.py [--variants hf-nocast,hf] [--batch 16] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GEMMS = {"mm", "addmm", "bmm", "baddbmm"}


class RecordGemms(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in GEMMS:
            ts = [a for a in args if isinstance(a, torch.Tensor)]
            self.calls.append((name, tuple((tuple(t.shape), tuple(t.stride()), t.dtype)
                                           for t in ts)))
        return func(*args, **(kwargs or {}))


def gemm_flops(name: str, shapes) -> int:
    a, b = shapes[-2][0], shapes[-1][0]
    if name in ("mm", "addmm"):
        return 2 * a[0] * a[1] * b[1]
    return 2 * a[0] * a[1] * a[2] * b[2]


def replay_time(name: str, shapes, repeats: int) -> float:
    """Best CPU time of the product alone, bf16 operands with the recorded layout."""
    ts = [torch.empty_strided(s, st, dtype=torch.bfloat16).normal_() for s, st, _ in shapes]
    op = getattr(torch, name)
    op(*ts)
    k = max(1, int(2e8 // gemm_flops(name, shapes)))  # >= ~0.2 GFLOP per timing
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(k):
            op(*ts)
        best = min(best, (time.process_time() - c0) / k)
    return best


def model_flops(model, batch: int, seq: int) -> int:
    """Analytic FLOPs of one LoRA training step (see the module docstring)."""
    tokens = batch * seq
    linear, lora = 0, 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            if hasattr(m, "lora_A"):
                r = m.lora_A.shape[0]
                lora += 2 * tokens * r * (m.in_features + m.out_features)
            linear += 2 * tokens * m.in_features * m.out_features
    cfg = model.backbone.base.config
    d = cfg.hidden_size // cfg.num_attention_heads
    attn = cfg.num_hidden_layers * 4 * batch * cfg.num_attention_heads * seq * seq * d
    # backward: activation grads of everything (= forward) + weight grads of LoRA A, B only
    return 2 * (linear + lora + attn) + lora


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="hf-nocast,hf")
    p.add_argument("--out", default=str(ROOT / "bench" / "reports" / "p3_ceiling.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    split = hf_step.make_split(args.batch, args.seq)
    res: dict = {"batch": args.batch, "seq": args.seq, "threads": 1}
    models = {k: hf_step.build(k) for k in args.variants.split(",")}
    peak_before = hf_step.bf16_peak()  # again at the end: the best of the two (shared machine)
    flops = model_flops(next(iter(models.values())), args.batch, args.seq)
    res["step_flops"] = flops
    ceilings = {}
    for k, m in models.items():
        hf_step.one_step(m, split, "bf16", args.batch)
        with RecordGemms() as rec:
            hf_step.one_step(m, split, "bf16", args.batch)
        uniq: dict = {}
        for call in rec.calls:
            uniq[call] = uniq.get(call, 0) + 1
        t_gemm = sum(n * replay_time(name, shapes, args.repeats)
                     for (name, shapes), n in uniq.items())
        g_flops = sum(n * gemm_flops(name, shapes) for (name, shapes), n in uniq.items())
        ceilings[k] = {"gemm_calls": len(rec.calls), "gemm_flops_recorded": g_flops,
                       "gemm_only_s": t_gemm, "shape_matched_gflops": g_flops / t_gemm / 1e9}
    times = {k: [] for k in models}
    for _ in range(args.repeats):  # interleaved, CPU time
        for k, m in models.items():
            times[k].append(hf_step.one_step(m, split, "bf16", args.batch))
    peak = max(peak_before, hf_step.bf16_peak())
    res["bf16_big_gemm_peak_gflops"] = peak
    for k in models:
        step = min(times[k])
        c = ceilings[k]
        gf = flops / step / 1e9
        res[k] = {**c, "step_cpu_s": step, "times": times[k], "gflops": gf,
                  "pct_big_gemm_peak": 100 * gf / peak,
                  "pct_shape_matched": 100 * gf / c["shape_matched_gflops"],
                  "gemm_share_of_step": c["gemm_only_s"] / step}
        print(f"{k:14s} step {step:.3f} s  {gf:.0f} GFLOP/s = {res[k]['pct_big_gemm_peak']:.1f} % "
              f"of big-GEMM peak {peak:.0f}, {res[k]['pct_shape_matched']:.1f} % of shape-matched "
              f"{c['shape_matched_gflops']:.0f} GFLOP/s (GEMMs alone {c['gemm_only_s']:.3f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
