"""train.device: auto/cpu resolve on this machine; cuda without a GPU exits 2 in one paragraph."""

from __future__ import annotations

import pytest
import torch

from fedfm.config import build_config
from fedfm.core.device import DevicePolicy, resolve_device
from fedfm.core.errors import ConfigError
from tests.conftest import tiny_raw

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_auto_and_cpu():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        build_config(tiny_raw(**{"train.device": "tpu"}))


@no_cuda
def test_cuda_without_gpu_is_refused_in_one_paragraph():
    with pytest.raises(ConfigError) as e:
        resolve_device("cuda")
    msg = str(e.value)
    assert "train.device = 'cuda'" in msg and "cpu" in msg and "\n" not in msg


@no_cuda
def test_cli_exits_2_without_traceback(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nname = "tiny-bert"\nmax_length = 16\n[data]\nname = "synthetic"\n'
                   'num_clients = 2\n[train]\nthreads = 1\ndevice = "cuda"\n')
    r = subprocess.run([sys.executable, "-m", "fedfm.cli", "run", str(cfg), f"out={tmp_path}/r"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "train.device = 'cuda'" in r.stderr


def test_policy_dtypes():
    cpu = DevicePolicy(torch.device("cpu"), "bf16")
    assert cpu.backbone_dtype == torch.float32  # CPU: fp32 weights + bf16 autocast
    gpu = DevicePolicy(torch.device("cuda"), "bf16")
    assert gpu.backbone_dtype == torch.bfloat16
    assert DevicePolicy(torch.device("cuda"), "fp32").backbone_dtype == torch.float32
