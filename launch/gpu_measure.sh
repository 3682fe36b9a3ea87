#!/usr/bin/env bash
# The accelerator measurements of docs/performance.md in one run: the attention kernels (`bench
# attention`: each one's error against the reference and its time), then
# sampling and training benchmarks, each stage under its own timeout so one hang costs only itself.
#
# On the machine with the GPU, from the project root (wheels for what it lacks: see
# ../shared/gpu/README.md, `bash ../shared/gpu/fetch_wheels.sh` on a machine with pip):
#   bash launch/gpu_measure.sh [--dry-run] [OUT_DIR [STAGE ...]]   # OUT_DIR default: $OUT or runs/gpu_measure
# Writes OUT_DIR/<stage>.log and .json. The stages' timeouts add up to ~24 minutes, more than one
# call of the device tool (10 min): name the stages to run, in order (default: all), e.g.
#   bash launch/gpu_measure.sh "$OUT" attention sample_b1 train_2b
# --dry-run prints the stages only.
set -uo pipefail
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
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
TRAIN="--pn 0.06M --batch 16 --rules dp --steps 10"
TRAIN_2B="infinity:infinity_2b,dtype=bfloat16,scan"

stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  [[ "$ONLY" != "  " && "$ONLY" != *" $name "* ]] && return 0
  echo "== $name (timeout ${limit}s): $*"
  [[ $DRY == 1 ]] && return 0
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - t0)) s; last lines:"; tail -n 4 "$OUT_DIR/$name.log" | sed 's/^/   /'
}

stage attention 150 $B attention --json "$OUT_DIR/attention.json"
stage sample_b1 240 $B sample $SAMPLE --batch 1 --runs 5 --json "$OUT_DIR/sample_b1.json"
stage train_2b 180 $B train --config $TRAIN_2B $TRAIN --json "$OUT_DIR/train_2b.json"
stage sample_b8 300 $B sample $SAMPLE --batch 8 --runs 3 --json "$OUT_DIR/sample_b8.json"
stage train_2b_remat 180 $B train --config $TRAIN_2B,remat=save_qkv_attn_mlp $TRAIN \
  --json "$OUT_DIR/train_2b_remat.json"
stage train_layer12 150 $B train --config infinity:infinity_layer12,dtype=bfloat16,scan $TRAIN \
  --json "$OUT_DIR/train_layer12.json"
stage sample_b4 240 $B sample $SAMPLE --batch 4 --runs 3 --json "$OUT_DIR/sample_b4.json"
echo "logs and JSON in $OUT_DIR"
