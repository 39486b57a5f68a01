"""Memory per added virtual client, up to 1,000 clients with private state, in one process.

Each client runs the `local` algorithm's client half on real all-MiniLM-L6-v2 (one shared frozen
backbone) and keeps its own LoRA (q, v, r=8) + head privately in the simulator's ClientStore:
`memory = store.get(k); algo.client_update(task, model, data_k, memory, ctx); store.put(k, memory)`
— the simulator's client loop (sim/clients.py) without the (irrelevant here) message encoding.
Every `--every` clients we read the process's resident memory (/proc/self/status: VmRSS and
RssAnon); the cost per added client is the least-squares slope of RSS over the number of
clients (from the first checkpoint on, after warm-up), divided by one client's private bytes.

Two modes, each in its own fresh process, one after the other:
  ram    no budget: every client's tensors stay in RAM      (target: slope <= 1.2 x private bytes)
  spill  [sim] memory_budget_mb = --budget-mb: the least recently used clients are written to
         safetensors files and memory-mapped back on use

  python bench/client_memory.py [--clients 1000] [--every 100] [--budget-mb 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def client_data(n_clients: int, n: int, seq: int):
    from fedfm.data.federated import ClientData, Split

    g = torch.Generator().manual_seed(0)
    out = []
    for cid in range(n_clients):
        ids = torch.randint(1000, 30000, (n, seq), generator=g)
        split = Split(ids, torch.ones_like(ids), torch.randint(0, 5, (n,), generator=g))
        out.append(ClientData(cid, split, split))
    return out


def measure(args) -> dict:
    from fedfm.algorithms.base import ClientContext
    from fedfm.algorithms.registry import build
    from fedfm.config import build_config
    from fedfm.core.seeds import derive_seed
    from fedfm.models.classifier import Classifier, freeze
    from fedfm.models.hf.loading import load_hf_backbone
    from fedfm.models.loading import minilm_path
    from fedfm.sim.store import ClientStore
    from fedfm.transport.messages import ClientTask

    torch.set_num_threads(args.threads)
    budget = args.budget_mb if args.mode == "spill" else None
    cfg = build_config({"algorithm": "local", "model": {"max_length": args.seq},
                        "train": {"max_steps": 1, "batch_size": args.n, "threads": args.threads},
                        "sim": {"memory_budget_mb": budget}})
    backbone = load_hf_backbone(Path(args.model_path) if args.model_path else minilm_path())
    freeze(backbone)
    model = Classifier(backbone, 5, "mean", 0)
    algo = build(cfg, 5, args.clients)
    algo.prepare_model(model)
    data = client_data(args.clients, args.n, args.seq)
    store = ClientStore.from_config(cfg.sim)
    points, private = [], 0
    t0 = time.perf_counter()
    for cid in range(args.clients):
        memory = store.get(cid)
        task = ClientTask(0, cid)
        algo.client_update(task, model, data[cid], memory, ClientContext(derive_seed(0, 0, cid, 1), 0, cid))
        store.put(cid, memory)
        private = memory.nbytes()
        if (cid + 1) % args.every == 0:
            points.append({"clients": cid + 1, **rss_mb(), "store_mb": store.nbytes() / 2**20,
                           "store_ram_mb": store.ram_bytes() / 2**20})
            print(args.mode, json.dumps(points[-1]), flush=True)
    return {"mode": args.mode, "budget_mb": budget, "private_bytes_per_client": private,
            "points": points, "wall_s": time.perf_counter() - t0, **slopes(points, private)}


def slopes(points: list[dict], private: int) -> dict[str, float]:
    x = torch.tensor([p["clients"] for p in points], dtype=torch.float64)
    out = {}
    for key in ("VmRSS", "RssAnon"):
        y = torch.tensor([p[key] for p in points], dtype=torch.float64) * 2**20
        xc = x - x.mean()
        slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())  # bytes per added client
        out[f"{key}_bytes_per_client"] = slope
        out[f"{key}_ratio_to_private"] = slope / private
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--n", type=int, default=4, help="examples per client (one step each)")
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget-mb", type=float, default=32.0)
    p.add_argument("--mode", choices=("ram", "spill", "both"), default="both")
    p.add_argument("--model-path", default=None, help="local HF folder (default: minilm-l6)")
    p.add_argument("--out", default=str(ROOT / "bench" / "reports" / "client_memory.json"))
    args = p.parse_args()
    if args.mode != "both":
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    results = {}
    for mode in ("ram", "spill"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]  # last --mode wins
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        results[mode] = json.loads(line.removeprefix("RESULT "))
        r = results[mode]
        print(f"{mode}: {r['private_bytes_per_client']:,} private bytes/client; RssAnon slope "
              f"{r['RssAnon_bytes_per_client']:,.0f} B/client = {r['RssAnon_ratio_to_private']:.3f}x;"
              f" VmRSS {r['VmRSS_ratio_to_private']:.3f}x; {r['wall_s']:.0f} s", flush=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), **results}, indent=2))


if __name__ == "__main__":
    main()
