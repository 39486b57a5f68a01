"""RaFFM vs full-model FedAvg vs HeteroFL on real all-MiniLM-L6-v2 + BBC, then 50% exports.

Three steps, each one command under ~12 minutes on the 2-core CPU:

  python bench/raffm_bench.py train fedavg      # full-model FedAvg (model.finetune=full)
  python bench/raffm_bench.py train raffm       # mixed tiers 30/40/30 % small/medium/large
  python bench/raffm_bench.py train heterofl    # same tiers, static prefixes, no SPP
  python bench/raffm_bench.py export raffm bert   # 50% exports + timing (also: raffm
  python bench/raffm_bench.py export fedavg bert  #   elastic); one process each
  python bench/raffm_bench.py report            # bench/reports/raffm.json + PNGs

All runs share every setting but the algorithm (same seed, partition, lr, rounds). Per-tier
figures come from summary.json's `clients` (each client's own tallies). FedAvg has no per-
client step time, so its step time = Σ client_compute_s / Σ steps (ceil(n_train / batch)).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench_raffm"
REPORT = ROOT / "bench" / "reports"

COMMON = {
    "rounds": 3, "seed": 0,
    "model": {"name": "minilm-l6", "finetune": "full", "max_length": 64},
    "data": {"name": "bbc", "partition": "dirichlet", "alpha": 0.5, "num_clients": 10,
             "max_examples": 500},
    "sampling": {"fraction": 1.0},
    "train": {"batch_size": 16, "lr": 1e-4, "head_lr": 1e-2, "precision": "bf16", "threads": 2},
    "resources": {"unit": "params", "tiers": {"small": 0.3, "medium": 0.6, "large": 1.0},
                  "proportions": {"small": 0.3, "medium": 0.4, "large": 0.3}},
}
EXPORTS = [("raffm", "bert"), ("raffm", "elastic"), ("fedavg", "bert"),
           ("pretrained", "bert"), ("pretrained", "elastic")]  # pretrained: timing only


def train(algorithm: str) -> None:
    from fedfm.config import build_config
    from fedfm.run import run

    raw = json.loads(json.dumps(COMMON))
    raw.update(algorithm=algorithm, out=str(RUNS / algorithm), overwrite=True)
    s = run(build_config(raw), quiet=True)
    print(json.dumps({k: s.get(k) for k in ("algorithm", "acc_global", "bytes_up",
                                            "client_compute_s", "round_wall_s")}))


def export_one(algo: str, shape: str) -> None:
    from fedfm.export.budget import export

    r = export(RUNS / algo, 0.5, RUNS / f"export_{algo}_{shape}", shape=shape, overwrite=True,
               repeats=7, threads=1)
    print(json.dumps({k: r[k] for k in ("algorithm", "shape", "params_fraction", "speedup",
                                        "acc_export", "acc_full")}))


def per_tier(summary: dict, rounds: int, batch: int) -> dict:
    tiers: dict[str, dict] = {}
    for c in summary["clients"]:
        t = tiers.setdefault(c.get("tier", "all"), {"clients": 0, "bytes_sent_per_round": [],
                                                    "step_s": [], "params_fraction": [],
                                                    "acc_personal": []})
        t["clients"] += 1
        t["bytes_sent_per_round"].append(c["bytes_sent"] / max(c["train_rounds"], 1))
        t["step_s"].append(c["step_s_mean"])
        t["params_fraction"].append(c["params_fraction"])
        t["acc_personal"].append(c["acc_personal"])
    return {k: {"clients": v["clients"], **{m: sum(x) / len(x) for m, x in v.items()
                                            if m != "clients"}} for k, v in tiers.items()}


def fedavg_tier(summary: dict, rounds: int, batch: int) -> dict:
    steps = rounds * sum(math.ceil(c["n_train"] / batch) for c in summary["clients"])
    n = len(summary["clients"])
    return {"all": {"clients": n, "bytes_sent_per_round": summary["bytes_up"] / (rounds * n),
                    "step_s": summary["client_compute_s"] / steps, "params_fraction": 1.0,
                    "acc_personal": summary["acc_personal_mean"]}}


def report() -> None:
    rounds, batch = COMMON["rounds"], COMMON["train"]["batch_size"]
    out: dict = {"config": COMMON, "runs": {}, "exports": []}
    for algo in ("fedavg", "raffm", "heterofl"):
        s = json.loads((RUNS / algo / "summary.json").read_text())
        rows = [json.loads(x) for x in (RUNS / algo / "metrics.jsonl").read_text().splitlines()]
        tiers = fedavg_tier(s, rounds, batch) if algo == "fedavg" else per_tier(s, rounds, batch)
        out["runs"][algo] = {
            "acc_global": s["acc_global"], "acc_personal_mean": s["acc_personal_mean"],
            "acc_global_by_round": [r["acc_global"] for r in rows],
            "bytes_up": s["bytes_up"], "bytes_down": s["bytes_down"],
            "client_compute_s": s["client_compute_s"], "round_wall_s": s["round_wall_s"],
            "speed_probe_gflops": s.get("speed_probe_gflops"), "tiers": tiers,
        }
    for algo, shape in EXPORTS:
        p = RUNS / f"export_{algo}_{shape}" / "fedfm_export.json"
        if p.is_file():
            out["exports"].append(json.loads(p.read_text()))
    REPORT.mkdir(parents=True, exist_ok=True)
    (REPORT / "raffm.json").write_text(json.dumps(out, indent=2))
    plot(out)
    print(markdown(out))


def markdown(out: dict) -> str:
    lines = ["| algorithm | tier | clients | params fraction | MB sent / client / round | "
             "s / local step | personal acc (own subnetwork) |", "|---|---|---|---|---|---|---|"]
    for algo, r in out["runs"].items():
        for tier, t in sorted(r["tiers"].items()):
            lines.append(f"| {algo} | {tier} | {t['clients']} | {t['params_fraction']:.3f} | "
                         f"{t['bytes_sent_per_round'] / 1e6:.1f} | {t['step_s']:.2f} | "
                         f"{t['acc_personal']:.3f} |")
    lines += ["", "| algorithm | global acc by round | bytes up (MB) | bytes down (MB) | "
              "client compute (s) |", "|---|---|---|---|---|"]
    for algo, r in out["runs"].items():
        accs = ", ".join(f"{a:.3f}" for a in r["acc_global_by_round"] if a is not None)
        lines.append(f"| {algo} | {accs} | {r['bytes_up'] / 1e6:.0f} | "
                     f"{r['bytes_down'] / 1e6:.0f} | {r['client_compute_s']:.0f} |")
    lines += ["", "| export | shape | heads x FFN | block params | FLOPs/example | ms/example "
              "(export / full) | speedup | acc export / full |", "|---|---|---|---|---|---|---|---|"]
    for e in out["exports"]:
        lines.append(f"| {Path(e['run']).name} 0.5 | {e['shape']} | {e['heads'][0]} x {e['ffn'][0]} | "
                     f"{e['params_fraction']:.3f} | {e['flops_per_example'] / 1e6:.0f} M / "
                     f"{e['flops_per_example_full'] / 1e6:.0f} M | "
                     f"{e['latency_ms_per_example']:.2f} / {e['latency_ms_per_example_full']:.2f}"
                     f" | {e['speedup']:.2f}x | {e['acc_export']:.3f} / {e['acc_full']:.3f} |")
    return "\n".join(lines)


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    for algo, r in out["runs"].items():
        ax[0].plot(range(1, len(r["acc_global_by_round"]) + 1), r["acc_global_by_round"],
                   marker="o", label=algo)
    ax[0].set(xlabel="round", ylabel="global test accuracy", title="accuracy (full model)")
    ax[0].legend()
    names, bytes_, steps = [], [], []
    for algo in ("fedavg", "raffm", "heterofl"):
        for tier, t in sorted(out["runs"][algo]["tiers"].items()):
            names.append(f"{algo}\n{tier}")
            bytes_.append(t["bytes_sent_per_round"] / 1e6)
            steps.append(t["step_s"])
    ax[1].bar(names, bytes_, color="tab:blue")
    ax[1].set(ylabel="MB sent per client per round", title="upload per tier")
    st = json.loads((REPORT / "raffm_steps.json").read_text())["step_s_median"]
    ax[2].bar(list(st), list(st.values()), color="tab:orange")
    ax[2].set(ylabel="s per step (1 thread)", title="full-FT step, side by side (raffm_steps)")
    for a in ax[1:]:
        a.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(REPORT / "raffm.png", dpi=90)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "report"
    if cmd == "train":
        train(sys.argv[2])
    elif cmd == "export":
        export_one(sys.argv[2], sys.argv[3])
    else:
        report()
