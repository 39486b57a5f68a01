#!/usr/bin/env bash
# FedMS vs FedAvg-LoRA vs local-only on BBC News + all-MiniLM-L6-v2, Dirichlet(0.1), 20 clients.
# Identical settings (configs/fedms.toml + the overrides below) for all runs; only `algorithm`
# (and, for `fedms_g`, two documented FedMS options) differs. Runs go in parallel, one thread
# each (accuracy does not depend on it; the shared 2-core machine is oversubscribed, so wall
# times are not comparable). Then bench/fedms_plot.py draws bench/reports/fedms_*.png.
#   bash bench/fedms_bbc.sh [extra overrides]   (writes $OUT/{fedms,fedms_g,fedavg,local})
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench_fedms}
MAX_EXAMPLES=${MAX_EXAMPLES:-1600}
COMMON=(rounds=6 fedms.stage1_rounds=3 data.max_examples=$MAX_EXAMPLES model.max_length=64
        train.precision=bf16 train.threads=1 sampling.fraction=0.5 eval.every=3 seed=0
        overwrite=true)
declare -A EXTRA=(
  [fedms]="algorithm=fedms"
  [fedms_g]="algorithm=fedms fedms.global_in_stage2=true fedms.local_ce_weight=1.0"
  [fedavg]="algorithm=fedavg"
  [local]="algorithm=local"
)
mkdir -p "$OUT"
pids=()
for run in fedms fedms_g fedavg local; do
  # shellcheck disable=SC2086
  /usr/bin/time -f "$run wall %e s" fedfm run --quiet configs/fedms.toml ${EXTRA[$run]} \
    "${COMMON[@]}" out="$OUT/$run" "$@" > "$OUT/$run.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
tail -n 2 "$OUT"/*.log
python bench/fedms_plot.py "$OUT"
