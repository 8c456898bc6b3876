#!/usr/bin/env bash
# Issue 24's device check: the GPU suite before and after the engine changes, on one
# device in one call, then the ratios and targets (benchmarks/gpu_compare.py).
#
# Prepare on the development machine (the "before" code is the last commit before
# issue 24's engine work, 49d97c6; it travels as an ignored folder):
#   echo /.before/ >> .git/info/exclude
#   rm -rf .before && mkdir .before && git archive 49d97c6 denoised_drs benchmarks tests/data \
#       | tar -x -C .before
# Then, with `run` (carry [".before"], timeout 600):
#   bash benchmarks/gpu_before_after.sh cifar10-50M      # about 5 min on an H200
#   bash benchmarks/gpu_before_after.sh imagenet-552M    # the second call, about 8 min
# Each call measures one preset: the old suite has no preset filter, so its run is cut
# by --budget to the eager rows plus whatever compiled rows fit (the first call keeps
# the old 50M compiled rows). Everything lands in $OUT (before.json, after.json,
# compare.json, log).
set -u -o pipefail
PRESET=${1:-cifar10-50M}
OUT=${OUT:-/tmp/gpu_before_after}
SECONDS_PER=${SECONDS_PER:-2}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/log"
python -c "import torch, diffusers, timm; print(torch.__version__, diffusers.__version__)" \
    2>&1 | tee -a "$OUT/log"
if [ "$PRESET" = cifar10-50M ]; then OLD_BUDGET=150; else OLD_BUDGET=0; fi
(cd .before && PYTHONPATH=$PWD timeout 280 python benchmarks/gpu_suite.py \
    --out "$OUT/before.json" --seconds "$SECONDS_PER" --budget "$OLD_BUDGET") 2>&1 \
    | grep -v Warning | tee -a "$OUT/log"
timeout 420 python benchmarks/gpu_suite.py --out "$OUT/after.json" --seconds "$SECONDS_PER" \
    --presets "$PRESET" --precisions fp32 bf16 bf16+compile bf16+cudagraphs 2>&1 \
    | grep -v Warning | tee -a "$OUT/log"
python benchmarks/gpu_compare.py "$OUT/before.json" "$OUT/after.json" \
    --out "$OUT/compare.json" 2>&1 | tee -a "$OUT/log"
