"""SAL step time and upload bytes vs k on real all-MiniLM-L6-v2 (L = 6 blocks).

Per k (top-down: the k blocks nearest the output active), one training step (forward + backward
+ grad clip + AdamW, fedfm's `train_local`) of:
  full    all-blocks LoRA step through the whole model (what FedAvg-LoRA does), the reference;
  sal     k active LoRA blocks, frozen prefix h_s recomputed per batch under no_grad;
  cached  k active LoRA blocks, h_s read from the client's prefix cache (built once).
Variants are interleaved round-robin (the machine is shared and noisy) and each figure is the
median (and the minimum) over repeats. Also: the exact bytes a FedMS client uploads in stage 1 for each k, next to
the bytes of the active LoRA + head tensors.

  python bench/sal_step.py [--batch 32] [--seq 64] [--steps 3] [--repeats 5] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.training import cross_entropy_loss, param_groups, train_local
from fedfm.config import TrainConfig, build_config
from fedfm.data.federated import Split
from fedfm.models.lora import lora_param_names, set_active_blocks
from fedfm.models.mofm import expert_forward
from fedfm.models.sal import PrefixSource, SALSchedule, build_cache
from fedfm.sim.world import build_world
from fedfm.transport.messages import encode, payload_bytes

ROOT = Path(__file__).resolve().parents[1]


def make_split(n: int, seq: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, seq), generator=g)
    return Split(ids, torch.ones(n, seq, dtype=torch.long), torch.randint(0, 5, (n,), generator=g))


def full_step(model, split: Split, tcfg: TrainConfig) -> float:
    set_active_blocks(model.backbone, None)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    t0 = time.perf_counter()
    train_local(param_groups(named, tcfg.lr, None), split, cross_entropy_loss(model), tcfg,
                torch.Generator().manual_seed(0))
    return (time.perf_counter() - t0) / tcfg.max_steps


def sal_step(algo, src: PrefixSource, k: int, tcfg: TrainConfig) -> float:
    """Steps of FedMS's stage-1 expert training with the top k blocks active."""
    L = algo.num_layers
    active = set(range(L - k, L))
    names = [f"backbone.{n}" for n in lora_param_names(algo.tail.backbone, active)]
    leaves = {n: algo.init[n].clone().requires_grad_(True) for n in names + ["head.weight",
                                                                              "head.bias"]}
    weights = {**algo.init, **leaves}
    set_active_blocks(algo.tail.backbone, active)

    def loss_fn(rows, mask, y):
        _, z = expert_forward(algo.tail, weights, src.hidden(rows, mask.shape[1]), mask, src.start)
        return F.cross_entropy(z.float(), y)

    t0 = time.perf_counter()
    train_local(algo._groups(leaves), src, loss_fn, tcfg, torch.Generator().manual_seed(0))
    return (time.perf_counter() - t0) / tcfg.max_steps


def step_times(world, args) -> dict:
    algo, model = world.algorithm, world.model
    L = algo.num_layers
    split = make_split(args.batch * args.steps, args.seq)
    tcfg = TrainConfig(batch_size=args.batch, lr=1e-4, max_steps=args.steps,
                       precision=args.precision)
    set_active_blocks(model.backbone, set())
    caches = {}
    for k in range(1, L + 1):
        t0 = time.perf_counter()
        caches[k] = build_cache(model.backbone, split, L - k, args.precision)
        caches[f"build{k}"] = time.perf_counter() - t0
    times: dict[str, list[float]] = {"full": []}
    for k in range(1, L + 1):
        times[f"sal{k}"], times[f"cached{k}"] = [], []
    full_step(model, split, tcfg)  # warm-up
    for _ in range(args.repeats):
        times["full"].append(full_step(model, split, tcfg))
        for k in range(1, L + 1):
            s = L - k
            times[f"sal{k}"].append(sal_step(algo, PrefixSource(model.backbone, split, s,
                                                                 args.precision), k, tcfg))
            times[f"cached{k}"].append(sal_step(algo, PrefixSource(
                model.backbone, split, s, args.precision, caches[k]), k, tcfg))
    med = {name: statistics.median(v) for name, v in times.items()}
    best = {name: min(v) for name, v in times.items()}  # least disturbed by other processes
    rows = []
    for k in range(1, L + 1):
        rows.append({"k": k, "full_s": med["full"], "sal_s": med[f"sal{k}"],
                     "cached_s": med[f"cached{k}"], "sal_ratio": med[f"sal{k}"] / med["full"],
                     "cached_ratio": med[f"cached{k}"] / med["full"],
                     "sal_ratio_min": best[f"sal{k}"] / best["full"],
                     "cached_ratio_min": best[f"cached{k}"] / best["full"],
                     "target_ratio": k / L + 0.1,
                     "cache_build_s": caches[f"build{k}"],
                     "cache_mb": caches[k].numel() * caches[k].element_size() / 2**20})
    return {"rows": rows, "samples": times}


def upload_bytes(world) -> list[dict]:
    """Exact stage-1 upload of one FedMS client for k = 0..L (one local step)."""
    algo, L = world.algorithm, world.algorithm.num_layers
    algo.init_server(world.model)
    data = world.data.clients[0]
    params = dict(world.model.named_parameters())
    out = []
    for k in range(L + 1):
        algo.schedule = SALSchedule(L, k0=k, step=1)
        (task,) = algo.configure_train(0, [0])
        up = algo.client_update(task, world.model, data, ClientMemory(), ClientContext(0, 0, 0))
        active = set(task.config["active"])
        names = [f"backbone.{n}" for n in lora_param_names(world.model.backbone, active)]
        names += ["head.weight", "head.bias"]
        want = sum(params[n].numel() * params[n].element_size() for n in names)
        out.append({"k": k, "tensor_bytes": payload_bytes(up.tensors), "active_tensor_bytes": want,
                    "message_bytes": len(encode(up)), "equal": payload_bytes(up.tensors) == want})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/reports/fedms_sal_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = build_config({
        "algorithm": "fedms", "rounds": 2, "out": "runs/bench_sal_step",
        "model": {"name": "minilm-l6", "max_length": args.seq},
        "data": {"name": "bbc", "num_clients": 2, "max_examples": 100},
        "train": {"batch_size": 8, "max_steps": 1, "precision": args.precision},
    })
    world = build_world(cfg)
    result = {"args": vars(args), "upload": upload_bytes(world), **step_times(world, args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in result["upload"]:
        print(json.dumps(r))
    for r in result["rows"]:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
