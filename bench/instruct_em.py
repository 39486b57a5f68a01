"""Exact match of the untrained model and of the fine-tuned one, on the same global test set.

    python bench/instruct_em.py configs/instruct.toml [key=value ...]

Builds the run's world once, evaluates the untrained model (LoRA B = 0: the base model) on the
global test set, then runs the config (`fedfm.run.run`, which rebuilds the same seeded world)
and prints one JSON line: em_untrained, loss_untrained, the run's acc/loss, and wall times.
"""

from __future__ import annotations

import json
import sys
import time

from fedfm.algorithms import tasks
from fedfm.config import load_config
from fedfm.run import run
from fedfm.sim.world import build_world, set_threads


def main(argv: list[str]) -> dict:
    cfg = load_config(argv[0], argv[1:])
    set_threads(cfg)
    t0 = time.perf_counter()
    world = build_world(cfg)
    before = tasks.evaluate(world.model, world.data.global_test, cfg)
    t_before = time.perf_counter() - t0
    del world
    summary = run(cfg, quiet=True)
    return {
        "config": argv, "n_global_test": before["total"],
        "em_untrained": before["correct"] / max(before["total"], 1),
        "loss_untrained": before["loss"], "untrained_eval_wall_s": round(t_before, 1),
        **{k: summary.get(k) for k in ("acc_global", "acc_personal_mean", "loss_global",
                                        "loss_personal_mean", "wall_s", "setup_s",
                                        "client_compute_s", "trainable_params", "threads")},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
