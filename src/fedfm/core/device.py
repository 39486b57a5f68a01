"""Where the model runs: `train.device = "auto" | "cpu" | "cuda"` (auto = cuda when available).

One frozen backbone per process on the device, shared by every client (the embedded runtime
runs clients one after another on one model, as FS-LLM's `share_local_model` and OpenFedLLM do):

- CPU: fp32 weights; `train.precision = "bf16"` runs the forward under CPU bf16 autocast.
- CUDA: the frozen backbone's weights in bf16 when `train.precision = "bf16"` (half the memory),
  fp32 otherwise; trainable tensors (LoRA, heads, gates) always fp32 masters; the forward under
  `torch.autocast("cuda", bfloat16)`. Clients' private tensors live in host memory between
  rounds in one pinned buffer per client (fedfm.sim.store.pack); SAL prefix caches stay on the
  GPU (they are bounded by `fedms.cache_mb`).

The model boundary moves tensors: `Classifier`/`Tail` take CPU inputs and return CPU outputs
(a differentiable `.to()`), so algorithms, aggregation and messages never see device tensors.
Asking for cuda where there is none exits 2 with one paragraph (no silent CPU fallback).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from fedfm.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"train.device must be one of {', '.join(DEVICES)}, not '{name}'.")
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        why = ("this torch build has no CUDA support (a CPU wheel)" if torch.version.cuda is None
               else "no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)")
        raise ConfigError(
            f"train.device = 'cuda' was requested, but {why}. fedfm does not fall back to the "
            "CPU silently: set train.device = 'cpu' (or 'auto', which picks cuda only when one "
            "is available), or install a CUDA build of torch on a machine with an NVIDIA GPU.")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and has_cuda) else "cpu")


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    precision: str = "fp32"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def backbone_dtype(self) -> torch.dtype:
        """Frozen backbone weights: bf16 on CUDA when bf16 is asked for, else fp32."""
        return torch.bfloat16 if self.cuda and self.precision == "bf16" else torch.float32

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def deterministic(self) -> None:
        """Bit-reproducible CUDA kernels (parity tests): cuBLAS workspace + deterministic algos."""
        if self.cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False


_CURRENT = DevicePolicy(torch.device("cpu"))


def policy_for(cfg) -> DevicePolicy:
    t = cfg.train
    return DevicePolicy(resolve_device(getattr(t, "device", "auto")), t.precision)


def activate(policy: DevicePolicy) -> DevicePolicy:
    """Make `policy` the process's current one (autocast device type, pinning)."""
    global _CURRENT
    _CURRENT = policy
    return policy


def current() -> DevicePolicy:
    return _CURRENT


def module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def autocast(precision: str):
    """bf16 autocast on the current device (`train.device`: cpu, or cuda); fp32: no-op."""
    if precision == "bf16":
        return torch.autocast(current().device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
