#!/usr/bin/env bash
# FedMS vs FedAvg-LoRA vs local-only on BBC News + all-MiniLM-L6-v2, Dirichlet(0.1), 20 clients.
# Identical settings (configs/fedms.toml + the overrides below) for the three; only `algorithm`
# differs. Then bench/fedms_plot.py draws bench/reports/fedms_*.png from the run folders.
#   bash bench/fedms_bbc.sh            (writes runs/bench_fedms/{fedms,fedavg,local})
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench_fedms}
COMMON=(rounds=8 fedms.stage1_rounds=4 data.max_examples=1200 model.max_length=64
        train.precision=bf16 sampling.fraction=0.5 seed=0 overwrite=true)
for algo in fedms fedavg local; do
  /usr/bin/time -f "$algo wall %e s" fedfm run configs/fedms.toml algorithm=$algo "${COMMON[@]}" \
    out=$OUT/$algo "$@"
done
python bench/fedms_plot.py "$OUT"
