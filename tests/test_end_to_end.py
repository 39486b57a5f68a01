import json

import pytest
import torch
from safetensors.torch import load_file

from fedfm.algorithms import registry
from fedfm.run import run
from tests.conftest import assert_clean_run


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "local", "fedper", "fedms"])
def test_every_seed_algorithm_runs(tiny_cfg, algorithm):
    cfg = tiny_cfg(algorithm=algorithm)
    s = run(cfg, quiet=True)
    assert s["algorithm"] == algorithm and s["rounds"] == 2
    assert (s["acc_global"] is None) == (algorithm in ("local", "fedper"))
    rows = [json.loads(x) for x in open(f"{cfg.out}/metrics.jsonl")]
    assert_clean_run(s, rows)  # learning itself: tests/test_algorithm_matrix.py
    assert [r["round"] for r in rows] == [1, 2]
    for key in ("bytes_up", "bytes_down", "round_wall_s", "client_compute_s", "peak_rss_mb",
                "trainable_params", "acc_global", "acc_personal_mean"):
        assert key in rows[-1]


def test_bytes_are_exact_payloads(tiny_cfg):
    cfg = tiny_cfg(algorithm="fedavg", rounds=1)
    s = run(cfg, quiet=True)
    tensors = load_file(f"{cfg.out}/final/global.safetensors")
    raw = sum(t.numel() * 4 for t in tensors.values())
    # 4 clients each send the LoRA+head tensors once up and once down (+ small headers)
    assert 4 * raw < s["bytes_up"] < 4 * raw + 4 * 4096
    assert s["trainable_params"] == sum(t.numel() for t in tensors.values())


def test_local_only_sends_no_tensors(tiny_cfg):
    s = run(tiny_cfg(algorithm="local", rounds=1), quiet=True)
    assert s["bytes_up"] < 4 * 200


def test_same_seed_same_weights(tiny_cfg, tmp_path):
    a = run(tiny_cfg(out=str(tmp_path / "a")), quiet=True)
    b = run(tiny_cfg(out=str(tmp_path / "b")), quiet=True)
    ta = load_file(str(tmp_path / "a/final/global.safetensors"))
    tb = load_file(str(tmp_path / "b/final/global.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert a["acc_global"] == b["acc_global"]
    run(tiny_cfg(out=str(tmp_path / "c"), seed=1), quiet=True)
    tc = load_file(str(tmp_path / "c/final/global.safetensors"))
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)


def test_fedprox_term_changes_the_update(tiny_cfg, tmp_path):
    a = tiny_cfg(algorithm="fedavg", out=str(tmp_path / "a"))
    b = tiny_cfg(algorithm="fedprox", out=str(tmp_path / "b"), **{"fedprox.mu": 10.0})
    run(a, quiet=True), run(b, quiet=True)
    ta = load_file(str(tmp_path / "a/final/global.safetensors"))
    tb = load_file(str(tmp_path / "b/final/global.safetensors"))
    assert any(not torch.allclose(ta[k], tb[k]) for k in ta)


def test_refuses_to_overwrite(tiny_cfg):
    from fedfm.core.errors import ConfigError

    cfg = tiny_cfg(rounds=1)
    run(cfg, quiet=True)
    with pytest.raises(ConfigError, match="overwrite=true"):
        run(cfg, quiet=True)


def test_registry_lists_all():
    assert {"fedavg", "fedprox", "local", "fedper"} <= set(registry.names())


def test_truncated_real_minilm_two_rounds(tmp_path):
    """A 2-round run on the real pre-trained MiniLM (first block only) and real BBC text."""
    from fedfm.config import build_config

    cfg = build_config({
        "algorithm": "fedavg", "rounds": 2, "seed": 0, "out": str(tmp_path / "real"),
        "model": {"name": "minilm-l6", "num_layers": 1, "max_length": 32},
        "data": {"name": "bbc", "num_clients": 3, "max_examples": 150},
        "train": {"batch_size": 16, "lr": 1e-3, "head_lr": 1e-2, "threads": 2},
    })
    s = run(cfg, quiet=True)
    assert s["acc_global"] is not None and s["acc_global"] > 0.3  # chance = 0.2
