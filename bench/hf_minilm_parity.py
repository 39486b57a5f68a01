"""MiniLM through transformers vs fedfm's legacy BERT: same config, same seed, side by side.

Runs `configs/demo.toml` (FedAvg-LoRA, MiniLM, BBC) twice in one process, once on each backbone
(the legacy one by listing fedavg in `loading.LEGACY_BERT` for that run), optionally reduced
(--max-examples, --rounds) when the machine is loaded; also checks that both tokenisers give
identical ids on the first 500 BBC texts and that the backbones give the same logits.

  python bench/hf_minilm_parity.py [--rounds 3] [--max-examples N] [--out F]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedfm.config import load_config
from fedfm.data.catalogue import load_dataset
from fedfm.models import loading
from fedfm.models.hf.loading import load_hf_backbone, load_hf_tokenizer
from fedfm.run import run

ROOT = Path(__file__).resolve().parents[1]


def tokeniser_check(n: int = 500) -> dict:
    ds = load_dataset("bbc", None, "text", "label", 0, 0)
    texts = list(ds.texts[:n])
    old = loading.load_tokenizer(loading.minilm_path(), 128)(texts)
    new = load_hf_tokenizer(loading.minilm_path(), 128)(texts)
    old_bb, _ = loading.load_backbone("minilm-l6", None, None, 0)
    new_bb = load_hf_backbone(loading.minilm_path()).eval()
    with torch.no_grad():
        diff = float((old_bb(*old[:2]) - new_bb(*new[:2])).abs().max())
    return {"texts": n, "ids_equal": bool(torch.equal(old[0], new[0])),
            "mask_equal": bool(torch.equal(old[1], new[1])), "max_hidden_diff_first2": diff}


def one(kind: str, over: list[str], out: Path) -> dict:
    legacy = loading.LEGACY_BERT
    if kind == "legacy":
        loading.LEGACY_BERT = (*legacy, "fedavg")
    try:
        cfg = load_config(ROOT / "configs" / "demo.toml",
                          [*over, f"out={out / kind}", "overwrite=true", "train.threads=1"])
        t0 = time.perf_counter()
        s = run(cfg, quiet=True)
    finally:
        loading.LEGACY_BERT = legacy
    return {"acc_global": s["acc_global"], "acc_personal_mean": s["acc_personal_mean"],
            "client_compute_s": s["client_compute_s"], "wall_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "reports" / "hf_minilm_parity.json"))
    p.add_argument("--runs", default="/tmp/fedfm_hf_parity")
    a = p.parse_args()
    torch.set_num_threads(1)
    over = [f"rounds={a.rounds}"]
    if a.max_examples:
        over.append(f"data.max_examples={a.max_examples}")
    res = {"overrides": over, "tokeniser": tokeniser_check()}
    print("tokeniser", res["tokeniser"], flush=True)
    for kind in ("legacy", "hf"):
        res[kind] = one(kind, over, Path(a.runs))
        print(kind, res[kind], flush=True)
    res["delta_acc_global_points"] = 100 * (res["hf"]["acc_global"] - res["legacy"]["acc_global"])
    res["compute_ratio_hf_over_legacy"] = (res["hf"]["client_compute_s"]
                                           / res["legacy"]["client_compute_s"])
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
