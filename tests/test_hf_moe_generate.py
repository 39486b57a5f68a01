"""FedMoE / randomMoE with task = "generate" on a tiny random MoE causal LM: stage-1 profiles
and stage-2 training use the response-only causal-LM loss, evaluation is greedy generation."""

import json

import pytest

from fedfm.config import build_config
from fedfm.run import run
from tests.gen_helpers import colour_records, write_jsonl
from tests.moe_tiny import save_tiny_moe_lm


def moe_gen_raw(tmp_path, family="mixtral", algorithm="fedmoe", rounds=5) -> dict:
    folder = save_tiny_moe_lm(tmp_path / f"lm-{family}", family)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_records(160))
    return {"algorithm": algorithm, "rounds": rounds, "seed": 0, "task": "generate",
            "out": str(tmp_path / f"run-{family}-{algorithm}"),
            "model": {"name": "hf", "path": str(folder), "max_length": 24, "lora_rank": 8,
                      "lora_targets": ["q_proj", "v_proj"]},
            "data": {"name": "jsonl", "path": str(data), "partition": "iid", "num_clients": 3},
            "train": {"batch_size": 8, "lr": 2e-2, "threads": 1, "local_epochs": 2},
            "eval": {"max_new_tokens": 3},
            "resources": {"unit": "memory", "per_client": [1.0, 0.5, 0.5]},
            algorithm: {"top_k": 2}}


def _check(s, out):
    rows = [json.loads(x) for x in open(f"{out}/metrics.jsonl")]
    losses = [r["loss_personal_mean"] for r in rows]
    assert losses[-1] < losses[0] - 0.3, losses  # the response loss falls
    assert s["acc_personal_mean"] is not None and 0.0 <= s["acc_personal_mean"] <= 1.0
    assert s["experts_total"] > 0 and 0 < s["experts_held_mean"] <= s["experts_total"]
    assert any(c["experts"] < s["experts_total"] for c in s["clients"])  # half-budget clients


def test_fedmoe_generate_reduces_response_loss(tmp_path):
    raw = moe_gen_raw(tmp_path)
    _check(run(build_config(raw), quiet=True), raw["out"])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
def test_randommoe_generate_on_other_families(tmp_path, family):
    raw = moe_gen_raw(tmp_path, family, "randommoe")
    _check(run(build_config(raw), quiet=True), raw["out"])
