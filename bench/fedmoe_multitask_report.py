"""Table 1 of the FedMoE paper from a bench/fedmoe_multitask.toml output folder, + curves and
FedMoE's expert usage per task (the investigation when it loses).

    python bench/fedmoe_multitask_report.py runs/bench/fedmoe_mt [PNG_PREFIX]

Per setting x method (mean ± sd over the seeds present, n = seeds): personalised accuracy per
task (mean over that task's clients of their own test split, after the last round) and their
macro mean; MB sent up + down over the whole run; peak client training memory (MiB: parameters +
3 x trainable, fp32, activations not counted: MoE = the largest client's cut sub-MoE as the
algorithm measured it, dense = the dense LoRA model, built here from the run's config); experts
held after the last round, mean over all clients and over the full-budget (b_k = 1) clients;
the gain of the macro accuracy per evaluation over the last 3 evaluations (bench/
paper_convergence.py's rule: "flat" when < 0.5 pt/eval; here how many seeds are flat); CPU
seconds per cell (bench.json). `fedmoe-fill` / `fedmoe-norec`: ablations, not the paper.
"""

from __future__ import annotations

import glob
import json
import statistics as st
import sys
from pathlib import Path

from paper_convergence import gain  # bench/ is sys.path[0] when run as a script

METHODS = ("fedmoe", "randommoe", "fedprox", "fedavg-lora", "fedmoe-fill", "fedmoe-norec")
WINDOW, TOL = 3, 0.5  # paper_convergence.py's defaults
MiB = 2**20


def load_runs(root: Path) -> dict[tuple[str, str], list[dict]]:
    """(setting, method) -> [{"summary", "rows", "dir"}] over the finished seeds."""
    out: dict[tuple[str, str], list[dict]] = {}
    for s in sorted(root.glob("*/*/seed*/summary.json")):
        run = s.parent
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
        out.setdefault((run.parent.parent.name, run.parent.name), []).append(
            {"summary": json.loads(s.read_text()), "rows": rows, "dir": run})
    return out


def dense_memory_mib(run: Path, cache: dict) -> float:
    """Training memory of a dense client (the whole LoRA model), built from the run's config."""
    cfg_raw = json.loads((run / "config.json").read_text())
    key = json.dumps(cfg_raw.get("model"), sort_keys=True)
    if key not in cache:
        from fedfm.algorithms.submoe import submodel_memory
        from fedfm.config import build_config
        from fedfm.sim.world import build_world

        world = build_world(build_config(cfg_raw))
        cache[key] = submodel_memory(world.model) / MiB
    return cache[key]


def fmt(vals: list[float], digits: int = 3) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{st.mean(vals):.{digits}f} ± {st.stdev(vals):.{digits}f}"


def cell_stats(runs: list[dict], mem_cache: dict) -> dict:
    tasks = list(runs[0]["summary"]["acc_by_task"])
    acc = {t: [r["summary"]["acc_by_task"][t]["personal"] for r in runs] for t in tasks}
    macro = [r["summary"]["acc_personal_mean"] for r in runs]
    mb = [(r["summary"]["bytes_up"] + r["summary"]["bytes_down"]) / 1e6 for r in runs]
    mems = []
    for r in runs:
        moe = [c["memory_mb"] for c in r["summary"]["clients"] if "memory_mb" in c]
        mems.append(max(moe) if moe else dense_memory_mib(r["dir"], mem_cache))
    slope = []
    for r in runs:
        # t = evaluation index, not round: this report keeps the rule per EVALUATION (every 3
        # rounds here), stricter than paper_convergence's per-round default by that factor
        ev = [(i, 100 * x["acc_personal_mean"]) for i, x in enumerate(
              x for x in r["rows"] if x.get("acc_personal_mean") is not None)]
        slope.append(gain(ev, WINDOW))
    held = [r["summary"].get("experts_held_mean") for r in runs]
    cpu = [json.loads((r["dir"] / "bench.json").read_text()).get("cpu_s") for r in runs
           if (r["dir"] / "bench.json").exists()]
    return {"tasks": tasks, "acc": acc, "macro": macro, "mb": mb, "mem": mems,
            "slope": [g for g in slope if g is not None],
            "held": [h for h in held if h is not None], "n": len(runs),
            "held_large": [x for r in runs for x in large_held(r)],
            "cpu": [c for c in cpu if c is not None],
            "total": runs[0]["summary"].get("experts_total")}


def large_held(run: dict) -> list[int]:
    """Experts held by the full-budget clients (b_k >= 1), from the run's resource profiles."""
    from fedfm.config import build_config
    from fedfm.core.resources import client_profiles

    if not run["summary"].get("experts_total"):
        return []
    cfg = build_config(json.loads((run["dir"] / "config.json").read_text()))
    prof = client_profiles(cfg.resources, len(run["summary"]["clients"]), cfg.seed)
    return [c["experts"] for c in run["summary"]["clients"] if prof[c["id"]].budget >= 1.0]


def table(runs: dict, settings: list[str]) -> str:
    cache: dict = {}
    out = []
    for setting in settings:
        cells = {m: cell_stats(runs[(setting, m)], cache) for m in METHODS
                 if (setting, m) in runs}
        if not cells:
            continue
        tasks = next(iter(cells.values()))["tasks"]
        out += [f"\n**{setting}**\n",
                "| method | n | " + " | ".join(tasks) + " | macro | MB sent (run) | peak client "
                "MiB | experts held of total: all / b=1 clients | gain/eval last 3 (pt); flat | "
                "CPU s |",
                "|---|---|" + "---|" * (len(tasks) + 6)]
        for m, c in cells.items():
            held = (f"{st.mean(c['held']):.1f} / {st.mean(c['held_large']):.1f} of {c['total']}"
                    if c["held"] else "all (dense)")
            flat = sum(g < TOL for g in c["slope"])
            out.append(f"| {m} | {c['n']} | " + " | ".join(fmt(c["acc"][t]) for t in tasks)
                       + f" | **{fmt(c['macro'])}** | {fmt(c['mb'], 1)} | {fmt(c['mem'], 1)} | "
                       f"{held} | {fmt(c['slope'], 2)}; {flat} of {len(c['slope'])} | "
                       f"{fmt(c['cpu'], 0)} |")
    return "\n".join(out)


def curves(runs: dict, settings: list[str], prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for setting in settings:
        ms = [m for m in METHODS if (setting, m) in runs]
        if not ms:
            continue
        tasks = list(runs[(setting, ms[0])][0]["summary"]["acc_by_task"])
        fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4 * (len(tasks) + 1), 3.2), dpi=90)
        for m in ms:
            for ax, t in zip(axes, [None, *tasks]):
                pts: dict[int, list[float]] = {}
                for r in runs[(setting, m)]:
                    for x in r["rows"]:
                        if x.get("acc_personal_mean") is None:
                            continue
                        v = x["acc_personal_mean"] if t is None else x["acc_by_task"][t]["personal"]
                        pts.setdefault(x["round"], []).append(v)
                xs = sorted(pts)
                ax.plot(xs, [st.mean(pts[k]) for k in xs], marker="o", label=m)
                ax.set_title(t or f"{setting}: macro"), ax.set_xlabel("round"), ax.grid(alpha=0.3)
        axes[0].set_ylabel("personalised accuracy"), axes[0].legend(fontsize=8)
        fig.tight_layout(), fig.savefig(f"{prefix}_{setting}.png"), plt.close(fig)


def expert_usage(run: Path) -> str:
    """FedMoE's stage-1 p per task, their cosine similarity, and held-expert overlap."""
    import torch
    from safetensors import safe_open

    ck = sorted(glob.glob(str(run / "checkpoint" / "*.safetensors")))
    if not ck:
        return f"(no checkpoint in {run})"
    with safe_open(ck[-1], "pt") as f:
        state = json.loads(f.metadata()["fedfm_checkpoint"])["server_state"]
    by_task: dict[str, list] = {}
    for p, _n, t in state["reports"].values():
        by_task.setdefault(t, []).append(torch.tensor(p).flatten())
    lines = [f"stage-1 reporters per task: { {t: len(v) for t, v in by_task.items()} }"]
    means = {t: torch.stack(v).mean(0) for t, v in by_task.items()}
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            cos = torch.nn.functional.cosine_similarity(means[a], means[b], dim=0)
            lines.append(f"cos(p[{a}], p[{b}]) = {float(cos):.3f}")
    uni = torch.full_like(next(iter(means.values())), 1 / 8)
    for t, p in means.items():
        lines.append(f"cos(p[{t}], uniform) = {float(torch.nn.functional.cosine_similarity(p, uni, dim=0)):.3f}; "
                     f"max share {float(p.max()):.3f}, min {float(p.min()):.3f}")
    sets = {int(c): {(i, e) for i, blk in enumerate(p["held"]) for e in blk}
            for c, p in state["plans"].items()}
    task_of = {int(c): t for c, t in state["task_of"].items()}

    def jac(a, b):
        return len(sets[a] & sets[b]) / max(len(sets[a] | sets[b]), 1)

    pairs = [(a, b) for a in sets for b in sets if a < b]
    same = [jac(a, b) for a, b in pairs if task_of.get(a) == task_of.get(b)]
    diff = [jac(a, b) for a, b in pairs if task_of.get(a) != task_of.get(b)]
    if same and diff:
        lines.append(f"held-expert Jaccard overlap: same task {st.mean(same):.3f}, "
                     f"different tasks {st.mean(diff):.3f}")
    recs = [c for r in state.get("rec", {}).values() for c in r.get("changes", [])]
    lines.append("expert recommendation outcomes: " + json.dumps(
        {k: recs.count(k) for k in sorted(set(recs))}))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    root = Path(argv[1])
    prefix = argv[2] if len(argv) > 2 else "bench/reports/fedmoe_multitask"
    runs = load_runs(root)
    settings = [s for s in ("hetero-t", "hetero-td", "enforced") if any(k[0] == s for k in runs)]
    print(table(runs, settings))
    curves(runs, settings, prefix)
    for setting in settings:
        for m in ("fedmoe", "fedmoe-fill", "fedmoe-norec"):
            for r in runs.get((setting, m), []):
                print(f"\n{m} expert usage, {setting} {r['dir'].name}:\n" + expert_usage(r["dir"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
