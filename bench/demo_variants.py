"""Run configs/demo.toml once per variant, side by side, and print ratios against the first.

Each variant is a separate `fedfm run` process (clean memory, same seed, same data split), run
one after the other on the same machine, so ratios are comparable even when absolute times drift.

  python bench/demo_variants.py --name comm \
      --variant "fp32=comm.dtype=fp32" --variant "bf16=comm.dtype=bf16" --variant "int8=comm.dtype=int8"

Writes bench/reports/<name>.json (one summary per variant) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("acc_global", "acc_personal_mean", "bytes_up", "bytes_down", "round_wall_s",
          "client_compute_s", "overhead_ratio", "peak_rss_mb", "speed_probe_gflops")


def run_variant(label: str, overrides: list[str], config: str, out_root: Path) -> dict:
    out = out_root / label
    cmd = [shutil.which("fedfm") or "fedfm", "run", "--quiet", config, f"out={out}",
           "overwrite=true", *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    summary["process_wall_s"] = time.perf_counter() - t0
    summary["overrides"] = overrides
    return summary


def table(results: dict[str, dict]) -> str:
    base = next(iter(results.values()))
    rows = ["| variant | acc_global | Δacc (pt) | bytes_up | bytes ratio | round_wall_s | "
            "time ratio | overhead_ratio | peak_rss_mb |", "|---" * 9 + "|"]
    for label, s in results.items():
        rows.append(
            f"| {label} | {s['acc_global']:.4f} | {100 * (s['acc_global'] - base['acc_global']):+.2f}"
            f" | {s['bytes_up']:,} | {s['bytes_up'] / base['bytes_up']:.3f}"
            f" | {s['round_wall_s']:.1f} | {s['round_wall_s'] / base['round_wall_s']:.3f}"
            f" | {s['overhead_ratio']:.4f} | {s['peak_rss_mb']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--variant", action="append", required=True,
                   help="LABEL=key=value[,key=value...]; the first variant is the baseline")
    p.add_argument("--set", action="append", default=[], help="override applied to every variant")
    args = p.parse_args()
    out_root = ROOT / "runs" / f"bench-{args.name}"
    results = {}
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        overrides = [o for o in rest.split(",") if o] + args.set
        results[label] = run_variant(label, overrides, args.config, out_root)
    report = ROOT / "bench" / "reports" / f"{args.name}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: {f: s.get(f) for f in (*FIELDS, "overrides", "process_wall_s", "threads",
                                       "interop_threads", "comm_dtype")} for k, s in results.items()}
    report.write_text(json.dumps({"command": " ".join(sys.argv), "results": keep}, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
