"""What validation, robust aggregation and DP cost per round, next to what the default path
already pays (decode + FedAvg mean), for MiniLM-L6's LoRA shapes (r=8 on query/value of 6
layers + a 5-class head) and 10 clients. Tensors are random with the real shapes: the cost of
these operations depends on shapes, not values. Median of --repeats timings, one process.

  python bench/reliability_overhead.py [--clients 10] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fedfm.algorithms.aggregation import masked_mean, robust_aggregate
from fedfm.core.reliability import AggregationConfig, ValidationConfig
from fedfm.transport.messages import ClientTask, ClientUpdate, decode, encode
from fedfm.transport.validation import validate_update


def lora_shapes(layers: int = 6, hidden: int = 384, rank: int = 8, labels: int = 5) -> dict:
    shapes = {}
    for i in range(layers):
        for m in ("query", "value"):
            p = f"backbone.encoder.layer.{i}.attention.self.{m}"
            shapes[f"{p}.lora_A"], shapes[f"{p}.lora_B"] = (rank, hidden), (hidden, rank)
    shapes["head.weight"], shapes["head.bias"] = (labels, hidden), (labels,)
    return shapes


def timed(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ref = {k: torch.randn(s, generator=g) * 0.02 for k, s in lora_shapes().items()}
    task = ClientTask(0, 0, ref)
    sets = [{k: v + torch.randn(v.shape, generator=g) * 0.01 for k, v in ref.items()}
            for _ in range(args.clients)]
    blobs = [encode(ClientUpdate(0, 0, 100, s)) for s in sets]
    n, r = args.clients, args.repeats
    res = {
        "update_bytes": len(blobs[0]),
        "decode_all_s": timed(lambda: [decode(b) for b in blobs], r),
        "validate_all_s": timed(lambda: [validate_update(b, task) for b in blobs], r),
        "validate_clip_all_s": timed(lambda: [validate_update(
            b, task, ValidationConfig(norm_bound=0.01, norm_action="clip")) for b in blobs], r),
        "mean_s": timed(lambda: masked_mean(sets, [1] * n), r),
    }
    for method in ("median", "trimmed_mean", "krum", "multi_krum"):
        cfg = AggregationConfig(method=method, byzantine=3, trim_fraction=0.3)
        res[f"{method}_s"] = timed(lambda cfg=cfg: robust_aggregate(sets, [1] * n, cfg), r)
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in res.items()},
                     indent=1))


if __name__ == "__main__":
    main()
