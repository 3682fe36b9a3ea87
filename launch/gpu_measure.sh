#!/usr/bin/env bash
# The accelerator measurements of docs/performance.md in one run: the attention kernels (`bench
# attention`: each one's error against the reference and its time), then
# sampling and training benchmarks, each stage under its own timeout so one hang costs only itself.
#
# On the machine with the GPU, from the project root (wheels for what it lacks: see
# ../shared/gpu/README.md, `bash ../shared/gpu/fetch_wheels.sh` on a machine with pip):
#   bash launch/gpu_measure.sh [--dry-run|--smoke] [OUT_DIR [STAGE ...]]   # OUT_DIR default: $OUT or runs/gpu_measure
# Writes OUT_DIR/<stage>.log and .json (sample_b1 and train_2b with their profile's summary: where the
# device time went, per op kind and model scope, and how busy the device was) and prints every figure
# last (launch/measure_summary.py). The stages' timeouts add up to ~24 minutes, more than one call of
# the device tool (10 min): name the stages to run (default: all); they run in the script's order, which
# is the order of importance, e.g.
#   bash launch/gpu_measure.sh "$OUT" attention sample_b1 train_2b
# BUDGET_S=S caps the whole run at S seconds (a stage's timeout is cut to what is left, less 20 s for the
# summary; a stage with under MIN_STAGE_S=60 left is skipped and named), so one device call of limit L
# run with BUDGET_S a little under L always ends with the summary of what it measured. A lease of 15
# device minutes, the machine's start included, holds one such call and what is left of a second:
#   BUDGET_S=540 bash launch/gpu_measure.sh "$OUT" attention sample_b1 train_2b sample_b8
#   BUDGET_S=<budget left - 60> bash launch/gpu_measure.sh "$OUT" train_layer12 train_2b_scan sample_b4 \
#     sample_b1_unscanned train_2b_dots
# (the second at once, while the machine is warm).
# --dry-run prints the stages only. --smoke runs every stage at tiny sizes (a CPU rehearsal of the
# device run, from the checkout through PYTHONPATH as there: tests/test_launchers.py).
# It runs the project from the checkout (PYTHONPATH; infinity_jax maps configs/ itself), no install.
set -uo pipefail
DRY=0 SMOKE=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
OUT_DIR="${1:-${OUT:-runs/gpu_measure}}"
shift || true
ONLY=" $* "
mkdir -p "$OUT_DIR"
if [[ -d .whl && $DRY == 0 ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
B="python3 -m infinity_jax bench"
SAMPLE="--config infinity_2b,dtype=bfloat16,scan --pn 1M"
SAMPLE_UNSCANNED="--config infinity_2b,dtype=bfloat16 --pn 1M"  # layers unrolled: no weight copies, slower compile
TRAIN="--pn 0.06M --batch 16 --rules dp --steps 10"
TRAIN_2B="infinity:infinity_2b,dtype=bfloat16"  # blocks unscanned, no remat: the recipe for one GPU (below)
TRAIN_2B_SCAN="infinity:infinity_2b,dtype=bfloat16,scan"  # the row as written
LAYER12="infinity:infinity_layer12,dtype=bfloat16"
ATTENTION=""
PROFILES=${PROFILES:-/tmp/infinity_profiles}  # the traces stay there (too many files to come back); the JSON has their summary
if [[ $SMOKE == 1 ]]; then
  SAMPLE="--config tiny,scan --schedule 1x1,2x2,4x4" SAMPLE_UNSCANNED="--config tiny --schedule 1x1,2x2,4x4"
  TRAIN="--schedule 1x1,2x2,4x4 --batch 2 --rules dp --steps 1"
  TRAIN_2B="infinity:tiny" TRAIN_2B_SCAN="infinity:tiny,scan" LAYER12="infinity:tiny"
  ATTENTION="--heads 2 --head-dim 16 --train-pn 0.06M --sample-pn 0.06M --text-len 8 --runs 1"
fi

# The training programs, chosen with XLA's GPU compiler and benchmarks/hlo_cost.py's roofline (docs/performance.md):
# the 2B step at 256², batch 16, with its blocks unscanned and no remat needs 60-61 GiB and its roofline is
# 66% MFU on an H200 (57% on an H100); scanned, the loop's stacked residuals, weight copies and transposed
# layouts take it to 72 GiB and 48%. train_2b measures the unscanned step; train_2b_scan the row as
# written, where the GPU has the memory (an H200); train_2b_dots the unscanned step with remat=dots (44 GiB).
SCAN_NOREMAT_OK=1
GPU_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 | tr -d ' ')
if [[ $SMOKE == 0 && "$GPU_MIB" =~ ^[0-9]+$ ]] && (( GPU_MIB < 120000 )); then
  SCAN_NOREMAT_OK=0
  echo "-- GPU memory ${GPU_MIB} MiB: train_2b_scan skipped (the scanned step without remat needs ~72 GiB, jax gets 90% of 80 GB)"
fi
# jax preallocates 75% of the GPU by default (98 GiB of an H200, 60 of an H100): less than those steps ask for
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
echo "-- XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION (the share of the GPU jax may allocate)"

stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]] && return 0
  if (( BUDGET_S > 0 && DRY == 0 )); then  # a stage gets what is left of the budget, less the summary's margin
    local left=$((BUDGET_S - SECONDS - 20))
    if (( left < MIN_STAGE_S )); then
      echo "== $name skipped: ${left}s of BUDGET_S=$BUDGET_S left"; SKIPPED+=" $name"; return 0
    fi
    (( limit > left )) && limit=$left
  fi
  echo "== $name (timeout ${limit}s): $*"
  [[ $DRY == 1 ]] && return 0
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  [[ $rc != 0 ]] && FAILED+=" $name"
  echo "   exit $rc after $((SECONDS - t0)) s; last lines:"; tail -n 4 "$OUT_DIR/$name.log" | sed 's/^/   /'
}
FAILED= SKIPPED=
BUDGET_S=${BUDGET_S:-0} MIN_STAGE_S=${MIN_STAGE_S:-60}

stage attention 150 $B attention $ATTENTION --json "$OUT_DIR/attention.json"
stage sample_b1 240 $B sample $SAMPLE --batch 1 --runs 5 --profile "$PROFILES/sample_b1" \
  --json "$OUT_DIR/sample_b1.json"
stage train_2b 240 $B train --config $TRAIN_2B $TRAIN --profile "$PROFILES/train_2b" --json "$OUT_DIR/train_2b.json"
stage sample_b8 300 $B sample $SAMPLE --batch 8 --runs 3 --json "$OUT_DIR/sample_b8.json"
stage train_layer12 150 $B train --config $LAYER12 $TRAIN \
  --json "$OUT_DIR/train_layer12.json"
if (( SCAN_NOREMAT_OK )); then
  stage train_2b_scan 180 $B train --config $TRAIN_2B_SCAN $TRAIN --json "$OUT_DIR/train_2b_scan.json"
fi
stage sample_b4 240 $B sample $SAMPLE --batch 4 --runs 3 --json "$OUT_DIR/sample_b4.json"
stage sample_b1_unscanned 300 $B sample $SAMPLE_UNSCANNED --batch 1 --runs 5 --json "$OUT_DIR/sample_b1_unscanned.json"
stage train_2b_dots 240 $B train --config $TRAIN_2B,remat=dots $TRAIN --json "$OUT_DIR/train_2b_dots.json"
echo "logs and JSON in $OUT_DIR"
[[ $DRY == 0 ]] && python3 launch/measure_summary.py "$OUT_DIR"  # every figure, last: what a remote call sees
if [[ -n $SKIPPED ]]; then echo "skipped (budget):$SKIPPED" >&2; fi
if [[ -n $FAILED ]]; then echo "failed:$FAILED" >&2; exit 1; fi
