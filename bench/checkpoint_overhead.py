"""What the default-on checkpoint costs: time inside Checkpointer.save next to each round's
wall time, measured in the same run (a ratio that survives a loaded machine), and the size of
the checkpoint file.

  python bench/checkpoint_overhead.py configs/demo.toml rounds=2 data.max_examples=400 ...
  python bench/checkpoint_overhead.py - algorithm=fedper model.name=tiny-bert \
      data.name=synthetic data.num_clients=1000 data.synthetic_size=8000 ...

`-` instead of a config file starts from the defaults. Prints one JSON line per round and a
summary line: save seconds, round seconds, overhead = save / round, checkpoint MB, clients with
private state in the checkpoint.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from fedfm.config import apply_overrides, build_config, read_toml
from fedfm.run import run
from fedfm.sim import checkpoint


def main(argv: list[str]) -> dict:
    path, overrides = argv[0], argv[1:]
    raw = {} if path == "-" else read_toml(Path(path), "Config file")
    out = tempfile.mkdtemp(prefix="ckpt-bench-")
    raw = apply_overrides(raw, overrides + [f"out={json.dumps(out)}", "overwrite=true",
                                            "checkpoint.enabled=true"])
    cfg = build_config(raw)
    saves: list[float] = []
    real_save = checkpoint.Checkpointer.save

    def timed_save(self, rnd, runner, rows):
        t0 = time.perf_counter()
        result = real_save(self, rnd, runner, rows)
        saves.append(time.perf_counter() - t0)
        return result

    checkpoint.Checkpointer.save = timed_save
    try:
        run(cfg, quiet=True)
    finally:
        checkpoint.Checkpointer.save = real_save
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    for r, s in zip(rows, saves):
        # round time as the user sees it: training + evaluation of that round
        wall = r["round_wall_s"] + (r.get("eval_wall_s") or 0.0)
        print(json.dumps({"round": r["round"], "round_s": round(wall, 3), "save_s": round(s, 4),
                          "overhead": round(s / wall, 5)}))
    files = sorted((Path(out) / "checkpoint").glob("round-*.safetensors"))
    meta = checkpoint.Checkpointer(out, cfg).read()["meta"]
    total_round = sum(r["round_wall_s"] + (r.get("eval_wall_s") or 0.0) for r in rows)
    summary = {"config": path, "overrides": overrides, "rounds": len(rows),
               "save_s_total": round(sum(saves), 3), "round_s_total": round(total_round, 2),
               "overhead": round(sum(saves) / total_round, 5),
               "checkpoint_mb": round(files[-1].stat().st_size / 2**20, 2),
               "clients_in_checkpoint": len(meta["clients"]), "files_kept": len(files)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
