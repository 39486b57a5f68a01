#!/usr/bin/env bash
# FedMS vs FedAvg-LoRA vs local-only on BBC News + all-MiniLM-L6-v2, Dirichlet(0.1), 20 clients.
# Identical settings (configs/fedms.toml + the overrides below) for the three; only `algorithm`
# differs. The three runs go in parallel, one thread each (accuracy does not depend on it; the
# shared 2-core machine is oversubscribed, so wall times are not comparable — compare
# client_compute_s only within one run). Then bench/fedms_plot.py draws bench/reports/fedms_*.png.
#   bash bench/fedms_bbc.sh [extra overrides]      (writes runs/bench_fedms/{fedms,fedavg,local})
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench_fedms}
COMMON=(rounds=6 fedms.stage1_rounds=3 data.max_examples=800 model.max_length=64
        train.precision=bf16 train.threads=1 sampling.fraction=0.5 eval.every=3 seed=0
        overwrite=true)
pids=()
for algo in fedms fedavg local; do
  /usr/bin/time -f "$algo wall %e s" fedfm run --quiet configs/fedms.toml algorithm=$algo "${COMMON[@]}" \
    out=$OUT/$algo "$@" > "$OUT.$algo.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
tail -n 2 "$OUT".*.log
python bench/fedms_plot.py "$OUT"
