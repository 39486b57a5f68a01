"""Issue #17 end to end through the CLI, as a user with a ViT checkpoint and an image folder runs it.

1. writes an image folder (train/ + test/, one sub-folder per digit, PNG) from MNIST-5k and a
   ViT folder (random init, FFN = 4 x hidden as in real ViTs, 28 px / 7 px patches) with its
   image processor: what `save_pretrained` of a real checkpoint gives;
2. `fedfm run` FedAvg, FedMS and RaFFM on `model.name=hf model.path=<ViT> data.name=imagefolder
   data.path=<folder>`;
3. `fedfm export <raffm run> --budget 0.5` and loads the export with transformers alone.

    python bench/vision_e2e.py WORKDIR [--rounds 3] [--train 1500] [--test 500]
Prints one JSON line per step (accuracy, wall time); exit 1 if a step fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ALGOS = {
    "fedavg": ["model.finetune=full"],
    "fedms": ["model.finetune=lora", "model.lora_rank=8", "fedms.stage1_rounds=2"],
    "raffm": ["model.finetune=full", 'resources.tiers={small=0.5, medium=0.75, large=1.0}',
              'resources.proportions={small=0.4, medium=0.3, large=0.3}'],
}


def write_inputs(work: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    from PIL import Image
    from transformers import ViTConfig

    from fedfm.data.images import load_mnist_5k
    from fedfm.models.vision import save_vit_folder

    ds, _ = load_mnist_5k()
    images = work / "mnist-folder"
    order = np.random.default_rng(0).permutation(len(ds))  # the file is sorted by digit
    for k, i in enumerate(order[: n_train + n_test]):
        d = images / ("train" if k < n_train else "test") / ds.label_names[ds.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.images[i]).save(d / f"{i}.png")
    config = ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=256, image_size=28, patch_size=7,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    vit = save_vit_folder(work / "vit", config, seed=0)
    return vit, images


def fedfm(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["fedfm", *args], check=True)
    return round(time.perf_counter() - t0, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--test", type=int, default=500)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    vit, images = write_inputs(a.work, a.train, a.test)
    common = [f"model.path={vit}", "model.name=hf", "model.pooling=cls", "data.name=imagefolder",
              f"data.path={images}", "data.num_clients=5", "data.alpha=1.0", f"rounds={a.rounds}",
              "train.batch_size=16", "train.lr=1e-3", "train.threads=1", "overwrite=true"]
    for algo, extra in ALGOS.items():
        out = a.work / "runs" / algo
        wall = fedfm("run", "configs/vision.toml", f"algorithm={algo}", f"out={out}",
                     *common, *extra, "--quiet")
        s = json.loads((out / "summary.json").read_text())
        print(json.dumps({"step": algo, "acc_global": s["acc_global"],
                          "acc_personal_mean": round(s["acc_personal_mean"], 4),
                          "bytes_up": s["bytes_up"], "wall_s": wall}), flush=True)
    exp = a.work / "export50"
    wall = fedfm("export", str(a.work / "runs" / "raffm"), "--budget", "0.5", "--out", str(exp),
                 "--overwrite")
    r = json.loads((exp / "fedfm_export.json").read_text())
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(str(exp))  # transformers alone, no fedfm code
    proc = AutoImageProcessor.from_pretrained(str(exp))
    print(json.dumps({"step": "export 0.5", "params_fraction": r["params_fraction"],
                      "ffn": r["ffn"][0], "heads": model.config.num_attention_heads,
                      "acc_export": r["acc_export"], "acc_full": r["acc_full"],
                      "speedup": r["speedup"], "automodel": type(model).__name__,
                      "processor": type(proc).__name__, "wall_s": wall}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
