"""Family x algorithm matrix (task = classify): every registry family and phi3 (held back from
the registry, the generic path) runs FedAvg, FedProx, FedPer, local and FedMS end to end via
`model.name = "hf"`, and the LoRA of the family's targets is trained and (where it travels)
aggregated. The default run covers every family with FedAvg and three families (Llama-GQA, GPT-2
Conv1D-fused, phi3 unregistered) with all five algorithms; the rest is `slow`. SAL's prefix
equality is checked per family in test_hf_models."""

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
