"""Training-step time of each tier's RaFFM subnetwork vs the full model, side by side.

One process, real all-MiniLM-L6-v2 (SPP-ordered), the widths each tier's budget gives, the same
batch (16 x 64 tokens, every token real), full fine-tuning of the kept block weights + head with
fedfm's own `train_local` (bf16 autocast, AdamW), one step per call, tiers interleaved, median
of `--repeats`. 1 thread by default: on a shared machine multi-thread barriers stall and hide
the compute difference.

  python bench/raffm_steps.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fedfm.algorithms.training import cross_entropy_loss, param_groups, train_local
from fedfm.config import TrainConfig
from fedfm.data.federated import Split
from fedfm.models.classifier import Classifier
from fedfm.models.hf.loading import load_hf_backbone
from fedfm.models.hf_elastic import extract, spp
from fedfm.models.hf_raffm import HFCost, frozen_params, geometry_of, server_tensors, sub_classifier
from fedfm.models.loading import minilm_path
from fedfm.models.sizing import largest_uniform

TIERS = {"small": 0.3, "medium": 0.6, "large": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_hf_backbone(minilm_path())
    full = Classifier(backbone, 5, "mean", 0)
    geo = geometry_of(full)
    tensors = spp(server_tensors(full, geo), geo)
    cm = HFCost(geo, tensors, frozen_params(full, geo), backbone.spec.hidden, "params")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (16, 64), generator=gen)
    split = Split(ids, torch.ones_like(ids), torch.randint(0, 5, (16,), generator=gen))
    cfg = TrainConfig(batch_size=16, lr=1e-4, precision="bf16", max_steps=1)
    times: dict[str, list[float]] = {t: [] for t in TIERS}
    for rep in range(args.repeats + 1):  # the first pass is a warm-up
        for tier, budget in TIERS.items():
            w = largest_uniform(cm, budget)
            clf = sub_classifier(full, geo, w, extract(tensors, geo, w))
            for p in list(clf.backbone.blocks.parameters()) + list(clf.head.parameters()):
                p.requires_grad_(True)
            named = [(n, p) for n, p in clf.named_parameters() if p.requires_grad]
            t0 = time.perf_counter()
            train_local(param_groups(named, 1e-4, 1e-2), split, cross_entropy_loss(clf), cfg,
                        torch.Generator().manual_seed(rep))
            if rep:
                times[tier].append(time.perf_counter() - t0)
    med = {t: statistics.median(v) for t, v in times.items()}
    print(json.dumps({"threads": args.threads, "repeats": args.repeats,
                      "step_s_median": med,
                      "relative_to_large": {t: med[t] / med["large"] for t in med},
                      "params_fraction": {t: cm.fraction(largest_uniform(cm, b))
                                          for t, b in TIERS.items()}}))


if __name__ == "__main__":
    main()
