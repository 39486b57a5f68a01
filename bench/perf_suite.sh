#!/usr/bin/env bash
# The performance suite in one go, for a quiet machine with >= 12 cores: the five demo variants
# (comm fp32/bf16/int8 at bf16 precision, precision fp32) run at once, each pinned to its own two
# cores (taskset) with train.threads=2 -- a 2-core machine each -- with the memory benchmark on two
# more cores; then the step-throughput benchmark alone on two cores.
#
#   MODEL="model.name=hf model.path=/path/to/minilm" OUTDIR=/tmp/perf bash bench/perf_suite.sh
#
# MODEL defaults to the packaged all-MiniLM-L6-v2 (model.name=minilm-l6). Results: $OUTDIR/*.json.
set -u
OUTDIR=${OUTDIR:-runs/perf-suite}
MODEL=${MODEL:-"model.name=minilm-l6"}
DEMO_EXTRA=${DEMO_EXTRA:-""}
MODEL_PATH=$(echo "$MODEL" | sed -n 's/.*model.path=\([^ ]*\).*/\1/p')
PY=${PY:-python3}
mkdir -p "$OUTDIR"

variant() {  # cores label overrides...
  local cores=$1 label=$2; shift 2
  timeout "${VARIANT_TIMEOUT:-420}" taskset -c "$cores" $PY -m fedfm.cli run --quiet \
    configs/demo.toml $MODEL train.threads=2 out="$OUTDIR/$label" overwrite=true $DEMO_EXTRA "$@" \
    > "$OUTDIR/$label.log" 2>&1
}

variant 0,1 comm_fp32 comm.dtype=fp32 &
variant 2,3 comm_bf16 comm.dtype=bf16 &
variant 4,5 comm_int8 comm.dtype=int8 &
variant 6,7 prec_fp32 train.precision=fp32 &
taskset -c 8,9 $PY bench/client_memory.py --threads 2 --n 2 --seq 16 --budget-mb 32 \
  ${MODEL_PATH:+--model-path "$MODEL_PATH"} --out "$OUTDIR/client_memory.json" \
  > "$OUTDIR/client_memory.log" 2>&1 &
wait
taskset -c 10,11 $PY bench/step_throughput.py --threads 2 --batch 16 --seq 128 --repeats 5 \
  --profile ${MODEL_PATH:+--model-path "$MODEL_PATH"} --out "$OUTDIR/step_throughput.json" \
  > "$OUTDIR/step_throughput.log" 2>&1
$PY - "$OUTDIR" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); res = {}
for d in sorted(p for p in out.iterdir() if (p / "summary.json").exists()):
    s = json.loads((d / "summary.json").read_text())
    res[d.name] = {k: s.get(k) for k in ("acc_global", "acc_personal_mean", "bytes_up", "bytes_down",
                   "bytes_eval", "round_wall_s", "client_compute_s", "overhead_ratio", "peak_rss_mb",
                   "threads", "interop_threads", "comm_dtype", "speed_probe_gflops")}
(out / "demo_variants.json").write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=1))
EOF
