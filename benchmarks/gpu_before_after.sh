#!/usr/bin/env bash
# Issue 24's device check in one call: the GPU suite before and after the engine
# changes on one device, then the ratios and targets (benchmarks/gpu_compare.py).
#
# Prepare on the development machine (unmeasured estimates: under 9 minutes in all):
#   printf '/.before/\n/.whl/\n' >> .git/info/exclude
#   rm -rf .before && mkdir .before && git archive 49d97c6 denoised_drs benchmarks tests/data \
#       | tar -x -C .before                    # the code before issue 24's engine work
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 \
#       importlib_metadata                     # the device image has no diffusers
# Then `run` with carry [".before", ".whl"], timeout_s 600:
#   bash benchmarks/gpu_before_after.sh
# Everything lands in $OUT: before.json, after.json, compare.json, log. Settings
# (environment): SUITE_SECONDS (timed seconds per row, 1), BEFORE_BUDGET / AFTER_BUDGET
# (seconds after which each suite skips its remaining compiled rows and the auto-batch
# row: 150 / 150),
# PRECISIONS (after: "bf16 bf16+compile"; add fp32 or bf16+cudagraphs if time allows),
# PRESETS (after: both). The old suite has no preset filter: it always measures both
# presets' eager rows first, then compiled rows while its budget lasts.
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_before_after}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=python3
if ! $PY -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site
fi
$PY -c "import torch, diffusers, timm; print('torch', torch.__version__, 'diffusers',
diffusers.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" 2>&1 \
    | tee "$OUT/log" || { echo "missing packages (see the header: .whl)"; exit 3; }
SITE=${PYTHONPATH:-}
(cd .before && PYTHONPATH="$PWD${SITE:+:$SITE}" timeout 230 $PY benchmarks/gpu_suite.py \
    --out "$OUT/before.json" --seconds "${SUITE_SECONDS:-1}" --budget "${BEFORE_BUDGET:-150}") \
    2>&1 | grep -v Warning | tee -a "$OUT/log"
# shellcheck disable=SC2086  # PRECISIONS and PRESETS are word lists
timeout 280 $PY benchmarks/gpu_suite.py --out "$OUT/after.json" \
    --seconds "${SUITE_SECONDS:-1}" --budget "${AFTER_BUDGET:-150}" \
    --precisions ${PRECISIONS:-bf16 bf16+compile} ${PRESETS:+--presets $PRESETS} 2>&1 \
    | grep -v Warning | tee -a "$OUT/log"
$PY benchmarks/gpu_compare.py "$OUT/before.json" "$OUT/after.json" --out "$OUT/compare.json" \
    2>&1 | tee -a "$OUT/log"
