"""RaFFM's machinery on a real LLM: SmolLM2-135M-Instruct (Llama family, GQA 9 q / 3 kv heads,
30 blocks). No training (CPU time): SPP's function check on the real weights, a 50% cut
exported as a standard LlamaConfig, reloaded with transformers alone, timed side by side.

  python bench/hetero_smollm2.py [OUT_DIR]     # default /tmp/smollm2_half
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def main(out: Path) -> dict:
    from transformers import AutoModel

    from fedfm.export.hf import write_standard
    from fedfm.models.classifier import Classifier, set_tensors
    from fedfm.models.hf.loading import load_hf_backbone
    from fedfm.models.hf_elastic import extract, fuse, spp, subnetwork
    from fedfm.models.hf_raffm import HFCost, frozen_params, geometry_of, server_tensors
    from fedfm.models.sizing import largest_uniform
    from fedfm.models.smollm2 import smollm2_folder

    torch.set_num_threads(1)
    clf = Classifier(load_hf_backbone(smollm2_folder()), 5).eval()
    geo = geometry_of(clf)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 40000, (4, 64), generator=g)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        h0 = clf.backbone(ids, mask)
    t = server_tensors(clf, geo)
    ordered = spp(t, geo)
    set_tensors(clf, fuse(ordered, geo))
    with torch.inference_mode():
        h1 = clf.backbone(ids, mask)
    cost = HFCost(geo, ordered, frozen_params(clf, geo), clf.backbone.spec.hidden)
    w = largest_uniform(cost, 0.5)
    sub = subnetwork(clf, geo, w, extract(ordered, geo, w)).eval()
    out.mkdir(parents=True, exist_ok=True)
    write_standard(out, clf, sub, clf.backbone.family, geo, w)
    model = AutoModel.from_pretrained(str(out), use_safetensors=True, local_files_only=True).eval()
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("layers."))
    full_blocks = sum(p.numel() for n, p in clf.backbone.base.named_parameters()
                      if n.startswith("layers."))
    with torch.inference_mode():
        gap = float((model(input_ids=ids, attention_mask=mask).last_hidden_state
                     - sub.backbone(ids, mask)).abs().max())
    lat = timed({"export": lambda: model(input_ids=ids, attention_mask=mask),
                 "full": lambda: clf.backbone.base(input_ids=ids, attention_mask=mask)})
    return {"spp_rel_diff": float((h1 - h0).norm() / h0.norm()),
            "groups": w.heads[0], "q_heads": w.heads[0] * geo.n_rep, "ffn": w.ffn[0],
            "config": {k: model.config.to_dict()[k] for k in (
                "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")},
            "block_params": blocks, "block_params_full": full_blocks,
            "params_fraction": round(blocks / full_blocks, 4), "export_vs_fedfm_max_diff": gap,
            "latency_s_export": lat["export"], "latency_s_full": lat["full"],
            "speedup": round(lat["full"] / lat["export"], 3), "batch": list(ids.shape),
            "threads": 1}


@torch.inference_mode()
def timed(fns: dict, repeats: int = 5) -> dict:
    """Median seconds per call, interleaved (same machine load for both)."""
    times: dict = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/smollm2_half"))))
