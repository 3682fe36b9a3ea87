#!/usr/bin/env bash
# Run `infinity-jax train` on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/run [--project P]
#                     [--dry-run] [-- --config.key=value ...]
# e.g. the 2B model on a v5p-128 slice (mesh presets: configs/mesh_presets.py):
#   launch/tpu_pod.sh --tpu my-v5p --zone us-east5-a --config configs/zoo.py:2b,mesh=v5p-128 \
#       --workdir gs://my-bucket/runs/2b -- --config.data.path=gs://my-bucket/data/infinity
#
# Steps: copy this checkout to every worker, install it into a venv there, then start the trainer on
# all workers at once (jax.distributed.initialize() auto-detects the TPU slice; only process 0 logs).
# CONFIG is a file of this checkout (the workers run from a copy of it). The workdir must be
# reachable from every worker (a GCS bucket or a shared disk); logs are streamed back and also kept
# on each worker in ~/infinity_jax_train.log.
# --dry-run (or DRY_RUN=1) prints every command instead of running it. CONFIG and the overrides are loaded here
# first (launch/common.sh config_loads: PYTHON, SKIP_CONFIG_CHECK=1): a bad one exits 2 with one line before
# anything is copied. The training command on the workers ends with the trainer's exit status, not tee's
# (75: preempted and saved; rerun to resume).
set -euo pipefail
usage="usage: $0 --tpu NAME --zone ZONE --config CONFIG --workdir DIR [--project P] [--dry-run] [-- --config.key=value ...]"
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/launch/common.sh"
need() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value"; }
tpu="" zone="" config="" workdir="" project="" dry=${DRY_RUN:-0} extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) need "$@"; tpu=$2; shift 2 ;;
    --zone) need "$@"; zone=$2; shift 2 ;;
    --config) need "$@"; config=$2; shift 2 ;;
    --workdir) need "$@"; workdir=$2; shift 2 ;;
    --project) need "$@"; project=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done
for v in tpu zone config workdir; do
  [[ -n "${!v}" ]] || die "--$v is required"
done
for a in "${extra[@]}"; do
  [[ $a == --config.* ]] || die "unexpected override '$a' after --: overrides look like --config.key=value"
done
file=${config%%:*}
[[ -f "$repo/$file" || -f "$repo/configs/$file.py" ]] ||
  die "config '$file' is not a file of this checkout (from --config '$config'; e.g. configs/zoo.py:2b,mesh=v5p-128)"
(cd "$repo" && config_loads "$config" "${extra[@]}")  # as the workers will, from the checkout: exit 2 if it fails
proj=()
[[ -n "$project" ]] && proj=(--project "$project")

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${proj[@]}" --worker=all --command "$1"
}

archive=/tmp/infinity_jax_src.tar.gz
run tar -C "$repo" --exclude=.git --exclude=.venv --exclude=runs -czf "$archive" .
run gcloud compute tpus tpu-vm scp "$archive" "$tpu:~/infinity_jax_src.tar.gz" --zone "$zone" "${proj[@]}" --worker=all
ssh_all "mkdir -p ~/infinity_jax && tar -xzf ~/infinity_jax_src.tar.gz -C ~/infinity_jax && cd ~/infinity_jax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'"
train="cd ~/infinity_jax && .venv/bin/infinity-jax train --config $(quote "$config") --workdir $(quote "$workdir")"
for a in "${extra[@]}"; do train+=" $(quote "$a")"; done
# pipefail: the trainer's exit status, not tee's, comes back (75: preempted, rerun to resume)
ssh_all "set -o pipefail; $train 2>&1 | tee ~/infinity_jax_train.log"
