"""Cost of FedMS's greedy mixture decoding (task = generate) against one expert's `generate`.

    python bench/fedms_decode.py configs/instruct.toml [key=value ...]

Builds the run's world (SmolLM2 on BoolQ with configs/instruct.toml), gives two LoRA experts
random B (so they differ), and times, on the first `eval.batch_size` global-test prompts with
`eval.max_new_tokens` new tokens: (a) transformers' greedy `generate` of one expert (KV cache),
(b) the mixture with one KV cache per expert (+ the frozen model the gate reads), (c) the mixture
recomputing every prefix (no cache). Prints one JSON line: CPU seconds (process time: robust on
a shared machine) and wall seconds per variant, and the ratios to (a).
"""

from __future__ import annotations

import json
import sys
import time

import torch

from fedfm.algorithms.training import autocast
from fedfm.config import load_config
from fedfm.models.classifier import get_tensors, set_tensors
from fedfm.models.lora import set_active_blocks
from fedfm.models.mofm_lm import LMStep, mixture_generate
from fedfm.sim.world import build_world, set_threads


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.process_time() - c, 2), round(time.perf_counter() - w, 2)


def main(argv: list[str]) -> dict:
    cfg = load_config(argv[0], ["algorithm=fedms", *argv[1:]])
    set_threads(cfg)
    world = build_world(cfg)
    model, algo = world.model, world.algorithm
    gen = torch.Generator().manual_seed(0)
    experts = [{k: torch.randn(v.shape, generator=gen) * 0.02 if k.endswith("lora_B") else v
                for k, v in get_tensors(model).items()} for _ in range(2)]
    pids, pmask, _ = next(world.data.global_test.prompt_batches(cfg.eval.batch_size))
    n = cfg.eval.max_new_tokens
    tok = model.tokenizer
    step = LMStep(model.backbone, model.lm_head)
    runs = [(experts[0], None), (experts[1], None), (algo.init, set())]

    def one():
        set_tensors(model, experts[0])
        set_active_blocks(model.backbone, None)
        return model.generate_ids(pids, pmask, n)

    def mix(cache):
        with autocast(cfg.train.precision):
            return mixture_generate(step, runs, algo.gate, 2, pids, pmask, n, tok.eos_token_id,
                                    tok.pad_token_id or 0, use_cache=cache)

    with autocast(cfg.train.precision):
        _, c_one, w_one = timed(one)
    a, c_kv, w_kv = timed(lambda: mix(True))
    b, c_re, w_re = timed(lambda: mix(False))
    return {"config": argv, "prompts": int(pids.shape[0]), "prompt_tokens": int(pids.shape[1]),
            "new_tokens": n, "same_tokens_cache_vs_recompute": a.tolist() == b.tolist(),
            "cpu_s": {"generate_one_expert": c_one, "mixture_kv": c_kv, "mixture_recompute": c_re},
            "wall_s": {"generate_one_expert": w_one, "mixture_kv": w_kv,
                       "mixture_recompute": w_re},
            "cpu_ratio_kv": round(c_kv / max(c_one, 1e-9), 2),
            "cpu_ratio_recompute": round(c_re / max(c_one, 1e-9), 2)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
