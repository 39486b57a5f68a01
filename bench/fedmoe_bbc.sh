#!/usr/bin/env bash
# FedMoE vs randomMoE (same memory budgets) vs FedAvg-LoRA over the dense model vs local-only,
# on all-MiniLM-L6-v2 + BBC News, Dirichlet(0.1) label skew, 10 clients in three memory tiers.
# Identical settings (configs/fedmoe.toml + the overrides below); only `algorithm` differs.
#   bash bench/fedmoe_bbc.sh                       # sequential, 2 threads (the 2-core machine)
#   PAR=1 THREADS=4 bash bench/fedmoe_bbc.sh       # the four runs side by side
#   bash bench/fedmoe_bbc.sh data.alpha=0.5        # extra overrides go to every run
# Then bench/fedmoe_report.py writes the figures/plots of bench/reports/fedmoe.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench_fedmoe}
THREADS=${THREADS:-2}
FEDFM=${FEDFM:-fedfm}
COMMON=(rounds=6 seed=0 overwrite=true train.threads=$THREADS eval.every=2)
run_one() {
  local algo=$1; shift
  $FEDFM run configs/fedmoe.toml algorithm=$algo out=$OUT/$algo "${COMMON[@]}" "$@" --quiet \
    > $OUT/$algo.log 2>&1 && echo "$algo done" || { echo "$algo FAILED"; tail -20 $OUT/$algo.log; }
}
mkdir -p $OUT
for algo in fedmoe randommoe fedavg local; do
  if [ "${PAR:-0}" = 1 ]; then run_one $algo "$@" & else run_one $algo "$@"; fi
done
wait
python3 bench/fedmoe_report.py $OUT || true
