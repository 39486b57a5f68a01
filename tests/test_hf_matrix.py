"""Family x algorithm matrix (task = classify): every registry family and phi3 (held back from
the registry, the generic path) runs FedAvg, FedProx, FedPer, local and FedMS end to end via
`model.name = "hf"`, and the LoRA of the family's targets is trained and (where it travels)
aggregated. The default run covers every family with FedAvg and three families (Llama-GQA, GPT-2
Conv1D-fused, phi3 unregistered) with all five algorithms; the rest is `slow`. SAL's prefix
equality is checked per family in test_hf_models.

task = generate: every decoder family (phi3 unregistered) runs FedMS (default run) and FedAvg
(slow) on a tiny *ForCausalLM with a word-level chat tokenizer; the other generate algorithms
run in test_generate, FedMS-generate's mechanism in test_fedms_generate."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from fedfm.config import build_config
from fedfm.run import run
from tests.conftest import tiny_raw
from tests.hf_tiny import configs, tiny_folder

ALGOS = ("fedavg", "fedprox", "fedper", "local", "fedms")
FAST_FAMS = ("llama", "gpt2", "phi3")


def cases():
    for fam in configs():
        for alg in ALGOS:
            fast = alg == "fedavg" or fam in FAST_FAMS
            yield pytest.param(fam, alg, marks=() if fast else pytest.mark.slow,
                               id=f"{fam}-{alg}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_matrix")
    return {f: tiny_folder(root, f) for f in configs()}


@pytest.mark.parametrize("fam,alg", list(cases()))
def test_family_runs_algorithm(folders, tmp_path, fam, alg):
    raw = tiny_raw(algorithm=alg, rounds=2, out=str(tmp_path / "run"),
                   **{"model.name": "hf", "model.path": str(folders[fam]),
                      "data.synthetic_size": 80, "data.num_clients": 2})
    s = run(build_config(raw), quiet=True)
    assert math.isfinite(s["acc_personal_mean"]) and 0 <= s["acc_personal_mean"] <= 1
    assert (s["bytes_up"] > 2000) == (alg != "local")  # local: message headers only
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len([r for r in rows if "round" in r]) >= 2
    if alg == "local":
        return
    final = load_file(str(tmp_path / "run" / "final" / "global.safetensors"))
    b = {k: v for k, v in final.items() if k.endswith("lora_B")}
    assert b, f"no LoRA in the global model of {fam}/{alg}"
    trained = [k for k, v in b.items() if float(v.abs().max()) > 0]
    if alg == "fedms":  # SAL, top-down from k0 = 1: the top block's LoRA was trained
        assert any(".1." in k for k in trained), trained
    else:
        assert len(trained) == len(b), f"untrained LoRA: {sorted(set(b) - set(trained))}"


# ---------------------------------------------------------------- task = generate

GEN_ALGOS = ("fedavg", "fedms")


def gen_cases():
    from tests.hf_tiny import DECODERS

    for fam in DECODERS:
        for alg in GEN_ALGOS:
            yield pytest.param(fam, alg, marks=() if alg == "fedms" else pytest.mark.slow,
                               id=f"{fam}-{alg}-generate")


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    from tests.gen_helpers import colour_records, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("hf_matrix_gen") / "c.jsonl", colour_records(48))


@pytest.mark.parametrize("fam,alg", list(gen_cases()))
def test_family_runs_algorithm_generate(lm_data, tmp_path, fam, alg):
    """Every decoder family (phi3: the generic path) fine-tunes its causal LM with FedAvg and
    FedMS (SAL prefix on the decoder, per-token mixture decoded greedily in stage 2)."""
    from tests.hf_tiny import tiny_lm_folder

    raw = tiny_raw(algorithm=alg, rounds=2, task="generate", out=str(tmp_path / "run"),
                   **{"model.name": "hf", "model.path": str(tiny_lm_folder(tmp_path, fam)),
                      "model.max_length": 16, "model.lora_targets": ["all-linear"],
                      "data.name": "jsonl", "data.path": str(lm_data), "data.partition": "iid",
                      "data.num_clients": 2, "eval.max_new_tokens": 2})
    s = run(build_config(raw), quiet=True)
    assert 0 <= s["acc_personal_mean"] <= 1 and math.isfinite(s["loss_personal_mean"])
    assert math.isfinite(s["loss_global"]) and s["bytes_up"] > 2000
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()
            if '"round"' in line]
    if alg == "fedms":  # round 1: stage 1 (global expert), round 2: stage 2 (gate only)
        assert [r["stage"] for r in rows] == [1, 2] and rows[1]["gate_local_mean"] is not None
        assert rows[1]["bytes_up"] < rows[0]["bytes_up"]
    final = load_file(str(tmp_path / "run" / "final" / "global.safetensors"))
    trained = [k for k, v in final.items() if k.endswith("lora_B") and float(v.abs().max()) > 0]
    assert trained, f"no trained LoRA in the global model of {fam}/{alg}/generate"
