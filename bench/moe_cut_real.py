"""A client holding k of E experts allocates only those, on a real MoE folder (e.g. the upcycled
SmolLM2-MoE): load it, cut every MoE block to `--held` experts, and compare with the full model
(BENCHMARKS.md section 18.1).

    PYTHONPATH=src python bench/moe_cut_real.py /tmp/moe/smollm2-moe --held 0,2

Prints: parameters (numel) of the full and the cut model, the expert tensors' element counts and
the bytes of their *storages* (index_select makes fresh k-row storages, not views into the E-row
ones: the cut model really allocates k/E of the expert memory), fedfm's training-bytes model
(submodel_memory, what FedMoE's budget search uses) and max |cut - masked| of the last hidden state
on a short real-token batch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fedfm.algorithms.submoe import submodel_memory
from fedfm.models.hf import moe as M
from fedfm.models.hf.loading import load_hf_backbone


def _expert_tensors(bb):
    for ex, rt in M.moe_layers(bb):
        yield from (ex.gate_up_proj, ex.down_proj, M.router_weight(rt))


def _count(bb) -> dict:
    params = {id(p): p for p in bb.parameters()}
    ex = list(_expert_tensors(bb))
    return {"params": sum(p.numel() for p in params.values()),
            "expert_params": sum(t.numel() for t in ex),
            "expert_storage_bytes": sum(t.untyped_storage().nbytes() for t in ex),
            "train_bytes": submodel_memory(bb)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--held", default="0,2", help="global expert ids held in every MoE block")
    a = ap.parse_args()
    torch.manual_seed(0)
    bb = load_hf_backbone(a.folder, None, 0.0, torch.float32)
    bb.eval()
    M.attach(bb, bb)
    bb.requires_grad_(False)
    keep = [int(x) for x in a.held.split(",")]
    held = [keep] * len(M.moe_layers(bb))
    ids = torch.randint(100, 40000, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        M.set_held(bb, held)
        masked = bb(ids, mask)
        M.set_held(bb, None)
        sub = M.cut(bb, held)
        diff = float((sub(ids, mask) - masked).abs()[mask.bool()].max())
    full, cut = _count(bb), _count(sub)
    print(json.dumps({"experts_per_block": M.num_experts(bb), "held_per_block": len(keep),
                      "moe_blocks": len(held), "full": full, "cut": cut,
                      "expert_ratio": cut["expert_params"] / full["expert_params"],
                      "max_abs_cut_minus_masked": diff}, indent=1))


if __name__ == "__main__":
    main()
