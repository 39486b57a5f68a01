"""`fedfm export --format peft|merged`: PEFT and plain transformers load the export and give
fedfm's outputs (tiny random decoders saved as local HF folders; no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

from fedfm.config import build_config
from fedfm.models.classifier import set_tensors
from fedfm.run import run
from fedfm.sim.world import build_world
from tests.gen_helpers import save_tiny_lm
from tests.test_generate import gen_raw

peft = pytest.importorskip("peft", reason="peft is in the test extra")
KW = {"use_safetensors": True, "local_files_only": True}


def finished_run(tmp_path, **over):
    train = {"batch_size": 8, "lr": 2e-2, "threads": 1, "max_steps": 2}
    raw = gen_raw(tmp_path, rounds=1, train=train, **over)
    cfg = build_config(raw)
    run(cfg, quiet=True)
    return cfg


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory):
    """One finished FedAvg task = generate run on a tiny Llama, shared by the export tests."""
    return finished_run(tmp_path_factory.mktemp("gen"))


def fedfm_model(cfg):
    """The run's final global model, rebuilt as fedfm does."""
    from safetensors.torch import load_file

    world = build_world(cfg)
    set_tensors(world.model, load_file(f"{cfg.out}/final/global.safetensors"))
    return world


def probe(world):
    s = world.data.global_test
    ids, mask = s.input_ids[:4], s.attention_mask[:4]
    t = int(mask.sum(1).max())
    return ids[:, :t], mask[:, :t]


def test_peft_adapter_round_trip_generate(tmp_path, gen_run):
    from transformers import AutoModelForCausalLM

    from fedfm.cli import main

    cfg = gen_run
    out = tmp_path / "adapter"
    assert main(["export", cfg.out, "--format", "peft", "--out", str(out)]) == 0
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 8 and conf["task_type"] == "CAUSAL_LM"
    world = fedfm_model(cfg)
    ids, mask = probe(world)
    with torch.inference_mode():
        ours = world.model.eval()(ids, mask)
        base = AutoModelForCausalLM.from_pretrained(cfg.model.path, **KW)
        plain = base(input_ids=ids, attention_mask=mask).logits.clone()
        loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
        theirs = loaded(input_ids=ids, attention_mask=mask).logits
    assert (ours - plain).abs().max() > 1e-3  # the adapter changes the model...
    assert torch.allclose(ours, theirs, atol=1e-5)  # ...and PEFT applies it exactly as fedfm
    report = json.loads((out / "fedfm_export.json").read_text())
    assert report["max_abs_diff_vs_fedfm"] < 1e-5


def test_merged_export_loads_without_fedfm_or_peft(tmp_path, gen_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedfm.export.peft import export_hf

    cfg = gen_run
    out = tmp_path / "merged"
    export_hf(cfg.out, out, "merged")
    assert not any("lora" in p.name for p in out.iterdir())
    world = fedfm_model(cfg)
    ids, mask = probe(world)
    with torch.inference_mode():
        ours = world.model.eval()(ids, mask)
        theirs = AutoModelForCausalLM.from_pretrained(str(out), **KW)(
            input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert AutoTokenizer.from_pretrained(str(out), local_files_only=True).chat_template


def test_peft_adapter_with_head_classify_gpt2(tmp_path):
    """Classification on GPT-2 (Conv1D, fan_in_fan_out): adapter + saved head = fedfm logits;
    the merged folder (Conv1D weights with LoRA folded in) + head too."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    from fedfm.export.peft import export_hf
    from fedfm.models.classifier import pool
    from tests.gen_helpers import colour_records, write_jsonl

    folder = save_tiny_lm(tmp_path / "gpt2", "gpt2")
    rows = [{"text": r["prompt"], "label": r["response"]} for r in colour_records(80)]
    raw = {"algorithm": "fedavg", "rounds": 1, "seed": 0, "out": str(tmp_path / "run"),
           "model": {"name": "hf", "path": str(folder), "max_length": 16, "lora_rank": 4},
           "data": {"name": "jsonl", "path": str(write_jsonl(tmp_path / "c.jsonl", rows)),
                    "partition": "iid", "num_clients": 2},
           "train": {"batch_size": 8, "lr": 1e-2, "threads": 1}}
    cfg = build_config(raw)
    run(cfg, quiet=True)
    out = tmp_path / "adapter"
    export_hf(cfg.out, out, "peft")
    assert json.loads((out / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    world = fedfm_model(cfg)
    ids, mask = probe(world)
    head = torch.nn.Linear(*reversed(world.model.head.weight.shape))
    head.load_state_dict(load_file(str(out / "classifier_head.safetensors")))
    pooling = json.loads((out / "fedfm_head.json").read_text())["pooling"]
    with torch.inference_mode():
        ours = world.model.eval()(ids, mask)
        base = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(str(folder), **KW),
                                              str(out)).eval()
        h = base(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = head(pool(h, mask, pooling))
    assert torch.allclose(ours, theirs, atol=1e-5)
    export_hf(cfg.out, tmp_path / "merged", "merged")  # plain AutoModel + the same head file
    with torch.inference_mode():
        h = AutoModel.from_pretrained(str(tmp_path / "merged"), **KW)(
            input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(ours, head(pool(h, mask, pooling)), atol=1e-5)


def test_export_refuses_personalised_runs(tmp_path, capsys):
    from fedfm.cli import main

    cfg = finished_run(tmp_path, algorithm="local", out=str(tmp_path / "run-local"))
    assert main(["export", cfg.out, "--format", "peft", "--out", str(tmp_path / "x")]) == 2
    assert "no global model" in capsys.readouterr().err


def test_budget_export_still_needs_a_budget(tmp_path, capsys):
    from fedfm.cli import main

    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "--budget" in capsys.readouterr().err
