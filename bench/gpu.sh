#!/usr/bin/env bash
# The speed, memory and probe-cost benchmarks on a CUDA machine, each printing its table (issue 24); under five
# minutes on one recent GPU. Written and tested on the CPU path only (`DEVICE=cpu bench/gpu.sh --quick`): no GPU
# figure in the notes was measured unless it came from running this on one.
#
#   bench/gpu.sh             # DEVICE=cuda: step_time, memory, probe_cost
#   DEVICE=cpu bench/gpu.sh --quick   # the same scripts on the CPU, a few variants and one small width
#   SKIP_STEP_TIME=1 ...              # leave the speed table out
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-bench-results}
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
mkdir -p "$OUT"

if [[ "$DEVICE" == cuda* ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: DEVICE=$DEVICE but torch sees no CUDA device; run with DEVICE=cpu for the CPU path" >&2
  exit 2
fi

if [[ $QUICK == 1 ]]; then
  VARIANTS=(lora dora); HIDDEN=(256); STEPS=4
else
  VARIANTS=(); HIDDEN=(768 1024 2048); STEPS=20
fi

echo "== step time ($DEVICE)"
if [[ "${SKIP_STEP_TIME:-0}" == 1 ]]; then
  echo "(skipped: SKIP_STEP_TIME=1)"
elif "$PY" bench/step_time.py --help | grep -q -- "--device"; then
  "$PY" bench/step_time.py "${VARIANTS[@]}" --device "$DEVICE" --csv "$OUT/step_time.csv"
else
  echo "(bench/step_time.py has no --device option yet: run on the CPU)"
  "$PY" bench/step_time.py "${VARIANTS[@]}" --repeats 3 --csv "$OUT/step_time.csv"
fi

echo "== peak memory of one step ($DEVICE)"
"$PY" bench/memory.py "${VARIANTS[@]}" --device "$DEVICE" --csv "$OUT/memory.csv"

echo "== probe cost ($DEVICE)"
"$PY" bench/probe_cost.py --hidden "${HIDDEN[@]}" --steps "$STEPS" --device "$DEVICE" \
  $([[ $QUICK == 1 ]] && echo --no-minilm) --csv "$OUT/probe_cost.csv"
echo "tables written to $OUT/"
