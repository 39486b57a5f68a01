"""The run loop on the embedded runtime: build the world, run the rounds, write the run folder.

`fedfm.run.run` picks the runtime; the Flower ServerApp drives this same loop with SuperNodes as
its clients (`transport`).
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from fedfm.core.schema import RunConfig
from fedfm.models.classifier import count_params
from fedfm.report.ui import Progress, round_line
from fedfm.sim.checkpoint import Checkpointer
from fedfm.sim.clients import Clients
from fedfm.sim.probe import matmul_gflops, peak_rss_mb
from fedfm.sim.rundir import RunDir
from fedfm.sim.runner import EmbeddedRunner
from fedfm.sim.world import World, build_world, set_threads, thread_settings

SUMMED = ("bytes_up", "bytes_down", "bytes_eval", "round_wall_s", "client_compute_s",
          "eval_wall_s", "client_eval_s")


def summarise(cfg: RunConfig, rows: list[dict[str, Any]], runner: EmbeddedRunner,
              extra: dict[str, Any]) -> dict[str, Any]:
    last_eval = next((r for r in reversed(rows) if r.get("acc_personal_mean") is not None), {})
    s: dict[str, Any] = {
        "algorithm": cfg.algorithm, "rounds": cfg.rounds, "seed": cfg.seed,
        "lr_schedule": cfg.train.lr_schedule,
        "acc_global": last_eval.get("acc_global"),
        "acc_personal_mean": last_eval.get("acc_personal_mean"),
        "acc_personal_weighted": last_eval.get("acc_personal_weighted"),
        "acc_personal_p10": last_eval.get("acc_personal_p10"),
        "min_client_test": cfg.data.min_client_test,
        "personal_clients": len(runner.personal_clients),
        "personal_excluded": runner.world.data.num_clients - len(runner.personal_clients),
    }
    if cfg.train.lr_schedule != "constant":
        s["lr_min_ratio"] = cfg.train.lr_min_ratio
    for key in ("loss_global", "loss_personal_mean"):  # task = generate
        if key in last_eval:
            s[key] = last_eval[key]
    for key in ("f1_global", "rougeL_global", "f1_personal_mean", "rougeL_personal_mean"):
        if key in last_eval:  # task = generate: token F1, ROUGE-L
            s[key] = last_eval[key]
    for key in ("acc_by_task", "loss_by_task", "f1_by_task", "rougeL_by_task"):  # multi-task
        if key in last_eval:
            s[key] = last_eval[key]
    for key in SUMMED:
        s[key] = sum(r.get(key) or 0 for r in rows)
    s["peak_rss_mb"] = max((r["peak_rss_mb"] for r in rows), default=peak_rss_mb())
    s["overhead_ratio"] = s["round_wall_s"] / s["client_compute_s"] if s["client_compute_s"] else None
    for key in ("rejected", "eval_rejected", "dropped", "late", "stale", "clipped", "skipped"):
        if any(key in r for r in rows):
            s[key] = sum(int(r.get(key) or 0) for r in rows)
    if any(r.get("dp_epsilon") is not None for r in rows):
        s["dp_epsilon"] = rows[-1].get("dp_epsilon")  # after the last round (δ = dp.delta)
    data = runner.world.data
    s["clients"] = [
        {"id": c.client_id, "n_train": len(c.train), "n_test": len(c.test),
         **({"task": c.task} if data.task_tests else {}),
         **runner.client_metrics.get(c.client_id, {})}
        for c in data.clients
    ]
    summary_fields = getattr(runner.algo, "summary_fields", None)  # e.g. fedmoe's expert counts
    if summary_fields is not None:
        s.update(summary_fields(s["clients"]))
    s.update(extra)
    return s


def run(cfg: RunConfig, quiet: bool = False, resume: bool = False,
        transport: Callable[[World], Clients] | None = None) -> dict[str, Any]:
    """Train `cfg` with this process as the server; returns summary.json's content.
    resume: continue the run in `cfg.out` from its last checkpoint (fedfm.sim.checkpoint).
    transport: where client halves run (default: in this process); `runtime = "flower"` runs
    this same loop inside a Flower ServerApp with SuperNodes as clients (fedfm.flower)."""
    threads = set_threads(cfg)
    run_dir = RunDir(cfg.out) if resume else RunDir.create(cfg)
    gflops = matmul_gflops()
    t0 = time.perf_counter()
    world = build_world(cfg)
    setup_s = time.perf_counter() - t0
    world.algorithm.init_server(world.model)
    trainable = count_params(world.algorithm.global_tensors()) or count_params(
        {n: p for n, p in world.model.named_parameters() if p.requires_grad})
    rows = []
    with Progress(cfg.rounds, quiet) as progress:
        runner = EmbeddedRunner(world, progress=progress.clients,
                                clients=transport(world) if transport else None)
        ckpt = Checkpointer(run_dir.path, cfg)  # writes only with [checkpoint] enabled
        start = ckpt.restore(runner, rows) if resume else 0
        for rnd in range(start, cfg.rounds):
            progress.start_round(rnd)
            row = runner.run_round(rnd)
            row["trainable_params"] = trainable
            run_dir.append_metrics(row)
            rows.append(row)
            ckpt.save(rnd + 1, runner, rows)
            progress.end_round(round_line(row, cfg.rounds))
    run_dir.save_global(world.algorithm.global_tensors())
    summary = summarise(cfg, rows, runner, {
        "trainable_params": trainable, "threads": threads, **thread_settings(),
        "runtime": cfg.runtime, "comm_dtype": cfg.comm.dtype, **runner.store.stats(), "setup_s": round(setup_s, 2),
        "speed_probe_gflops": round(gflops, 1), "machine": platform.machine(),
        "wall_s": round(time.perf_counter() - t0, 2),  # setup + rounds + evaluation
        "num_clients": world.data.num_clients, "num_labels": world.data.num_labels,
    })
    run_dir.write_summary(summary)
    from fedfm.report.plots import INSTALL, have_matplotlib, plot_accuracy

    if have_matplotlib():
        plot_accuracy(rows, run_dir.path / "accuracy.png", f"{cfg.algorithm} ({cfg.data.name})")
    else:  # a side product, not an option: say why it is missing, keep the run
        print(f"fedfm: accuracy.png not written (matplotlib missing: {INSTALL})", file=sys.stderr)
    return summary
