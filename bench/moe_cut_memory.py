"""Cut-model memory (fedfm's training-bytes model) and max |cut - masked| per MoE family, on the
tiny random configs of tests/moe_tiny.py (2 of 4 experts held per MoE block). Prints markdown
rows (BENCHMARKS.md section 13.1).   PYTHONPATH=src:. python bench/moe_cut_memory.py
"""

import tempfile
from pathlib import Path

import torch

from fedfm.algorithms.submoe import submodel_memory
from fedfm.models.hf import moe as M
from fedfm.models.hf.loading import load_hf_backbone
from tests.moe_tiny import FAMILIES, moe_folder


def row(root: Path, fam: str, ids, mask) -> str:
    bb = load_hf_backbone(moe_folder(root, fam), None, 0.0, torch.float32)
    bb.eval()
    M.attach(bb, bb)
    bb.requires_grad_(False)
    M.add_expert_lora(bb, 4, 8.0, 0)
    for _, rt in M.moe_layers(bb):
        M.router_weight(rt).requires_grad_(True)
    n = len(M.moe_layers(bb))
    held = [[0, 2]] * n
    M.set_held(bb, held)
    masked = bb(ids, mask)
    M.set_held(bb, None)
    sub = M.cut(bb, held)
    ex_full, ex_cut = (sum(map(sum, M.expert_costs(m, submodel_memory))) for m in (bb, sub))
    diff = float((sub(ids, mask) - masked).abs().max())
    return (f"| {fam} | {n} | {submodel_memory(bb):,} | {submodel_memory(sub):,} | "
            f"{ex_full:,} -> {ex_cut:,} | {diff:.1e} |")


def main() -> None:
    root = Path(tempfile.mkdtemp())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 5:] = 0
    for fam in (*FAMILIES, "switch_transformers"):
        print(row(root, fam, ids, mask))


if __name__ == "__main__":
    main()
