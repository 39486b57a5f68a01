"""LoRA training-step throughput on real all-MiniLM-L6-v2: fp32 vs bf16 autocast, as a share of
the bf16 matmul peak measured in the same process.

FLOP count: `torch.utils.flop_counter.FlopCounterMode` around one real step of fedfm's own loop
(`train_local`, forward + backward): it counts the matmul-class ops actually dispatched (mm,
addmm, bmm, scaled-dot-product attention, forward and backward: 2·m·n·k per matmul), nothing
for elementwise ops, layer norms, softmax or the optimiser. With W frozen, the backward of a
frozen linear layer computes only the input gradient, so a step is ~2x (not 3x) its forward.
Throughput = counted FLOPs / best step time (median also given); peak = best (n x n) @ (n x n)
bf16 GEMM of n = 1024 and 2048, 10 tries each, measured before and after the steps.

  python bench/step_throughput.py [--batch 16] [--seq 128] [--steps 6] [--profile]
"""

from __future__ import annotations

import argparse
import json
import statistics
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


MODEL_PATH: str | None = None  # --model-path: a local HF copy of MiniLM-L6 instead of the package


def build_model(attention_fp32: bool = True) -> Classifier:
    """MiniLM through transformers; attention_fp32 = fedfm_sdpa (SDPA in fp32 on the CPU), else
    transformers' own SDPA in the autocast dtype (what fedfm did before this benchmark)."""
    folder = Path(MODEL_PATH) if MODEL_PATH else minilm_path()
    backbone = load_hf_backbone(folder, sdpa_fp32=attention_fp32)
    freeze(backbone)
    model = Classifier(backbone, 5, "mean", 0)
    configure_finetune(model, "lora", ("query", "value"), 8, 16.0, 0)
    return model


def frozen_to_bf16(model: Classifier) -> None:
    """Store the frozen backbone in bf16 (trainable LoRA/head stay fp32 master weights)."""
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)


def make_split(n: int, seq: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, seq), generator=g)
    return Split(ids, torch.ones(n, seq, dtype=torch.long), torch.randint(0, 5, (n,), generator=g))


def one_call(model: Classifier, split: Split, precision: str, steps: int,
             batch: int) -> tuple[float, float]:
    """(wall, CPU) seconds of `steps` steps of fedfm's train_local (fwd + bwd + clip + AdamW)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    cfg = TrainConfig(batch_size=batch, lr=1e-4, max_steps=steps, precision=precision)
    t0, c0 = time.perf_counter(), time.process_time()
    train_local(param_groups(named, 1e-4, None), split, cross_entropy_loss(model), cfg,
                torch.Generator().manual_seed(0))
    return time.perf_counter() - t0, time.process_time() - c0


def cpu_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> tuple[float, float]:
    """(wall, CPU-time) GFLOP/s of an n x n matmul, best of `repeats`. With 1 thread the CPU-time
    figure does not count time the process waited for a core: robust on a shared machine."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return 2 * n**3 / wall / 1e9, 2 * n**3 / cpu / 1e9


def step_times(model, split, precision, batch, repeats) -> tuple[float, float, float]:
    """(best wall, median wall, best CPU) seconds of one step; best-of is compared with the
    best-of matmul peak."""
    one_call(model, split, precision, 1, batch)  # warm-up
    times = [one_call(model, split, precision, 1, batch) for _ in range(repeats)]
    walls = [w for w, _ in times]
    return min(walls), statistics.median(walls), min(c for _, c in times)


def count_flops(model, split, precision, batch) -> int:
    with FlopCounterMode(display=False) as fc:
        one_call(model, split, precision, 1, batch)
    return fc.get_total_flops()


def profile_step(model, split, precision, batch, path: Path) -> dict[str, float]:
    """torch.profiler over 3 steps; writes the top-op table, returns the time share by op kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_call(model, split, precision, 3, batch)
    avgs = prof.key_averages()
    path.write_text(avgs.table(sort_by="self_cpu_time_total", row_limit=25))
    total = sum(e.self_cpu_time_total for e in avgs)
    gemm = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention",
            "aten::_flash_attention_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
    share = sum(e.self_cpu_time_total for e in avgs if e.key in gemm) / total
    cast = sum(e.self_cpu_time_total for e in avgs if e.key in ("aten::copy_", "aten::_to_copy")) / total
    return {"gemm_and_attention_share": share, "dtype_copy_share": cast}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "reports" / "step_throughput.json"))
    p.add_argument("--model-path", default=None, help="local HF folder (default: minilm-l6)")
    args = p.parse_args()
    global MODEL_PATH
    MODEL_PATH = args.model_path
    torch.set_num_threads(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    split = make_split(args.batch, args.seq)
    peak = {d: max(matmul_gflops(n, 10, dt) for n in (1024, 2048))
            for d, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    peak["bf16_cpu_time"] = max(cpu_peak(torch.bfloat16, n)[1] for n in (1024, 2048))
    peak["fp32_cpu_time"] = max(cpu_peak(torch.float32, n)[1] for n in (1024, 2048))
    model, bf16_attn = build_model(), build_model(attention_fp32=False)
    res: dict = {"batch": args.batch, "seq": args.seq, "threads": args.threads, "peak_gflops": peak}
    variants = (("fp32", "fp32", False), ("bf16", "bf16", False),
                ("bf16-attention-in-bf16", "bf16", False), ("bf16+frozen-bf16", "bf16", True))
    for label, precision, cast in variants:
        m = _cast_copy() if cast else bf16_attn if "attention-in-bf16" in label else model
        flops = count_flops(m, split, precision, args.batch)
        secs, median, cpu = step_times(m, split, precision, args.batch, args.repeats)
        res[label] = {"flops": flops, "step_s": secs, "step_s_median": median, "step_cpu_s": cpu,
                      "pct_bf16_peak_cpu_time": 100 * flops / cpu / 1e9 / peak["bf16_cpu_time"],
                      "gflops": flops / secs / 1e9,
                      "pct_bf16_peak": 100 * flops / secs / 1e9 / peak["bf16"],
                      "pct_bf16_peak_median": 100 * flops / median / 1e9 / peak["bf16"]}
        print(label, json.dumps(res[label]), flush=True)
        if args.profile and precision == "bf16":
            name = "profile_" + label.replace("+", "_") + ".txt"
            res[label]["profile"] = profile_step(m, split, precision, args.batch,
                                                 Path(args.out).parent / name)
    peak2 = max(matmul_gflops(n, 10, torch.bfloat16) for n in (1024, 2048))
    res["peak_gflops"]["bf16_after"] = peak2  # drift check: the machine is shared
    res["bf16_speedup_vs_fp32"] = res["fp32"]["step_s"] / res["bf16"]["step_s"]
    res["fp32_attention_speedup"] = (res["bf16-attention-in-bf16"]["step_cpu_s"]
                                     / res["bf16"]["step_cpu_s"])
    res["frozen_bf16_speedup_vs_bf16"] = res["bf16"]["step_s"] / res["bf16+frozen-bf16"]["step_s"]
    res["bf16_speedup_vs_fp32_cpu_time"] = res["fp32"]["step_cpu_s"] / res["bf16"]["step_cpu_s"]
    res["frozen_bf16_speedup_cpu_time"] = (res["bf16"]["step_cpu_s"]
                                           / res["bf16+frozen-bf16"]["step_cpu_s"])
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=2))
    print("peak", peak, "after", peak2)


def _cast_copy() -> Classifier:
    m = build_model()
    frozen_to_bf16(m)
    return m


if __name__ == "__main__":
    main()
