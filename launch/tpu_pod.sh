#!/usr/bin/env bash
# Run `infinity-jax train` on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/run [--project P]
#                     [--dry-run] [-- --config.key=value ...]
#
# Steps: copy this checkout to every worker, install it into a venv there, then start the trainer on
# all workers at once (jax.distributed.initialize() auto-detects the TPU slice; only process 0 logs).
# The workdir must be reachable from every worker (a GCS bucket or a shared disk); logs are
# streamed back and also kept on each worker in ~/infinity_jax_train.log.
# --dry-run prints every command instead of running it.
set -euo pipefail
tpu="" zone="" config="" workdir="" project="" dry=0 extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "$0: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for v in tpu zone config workdir; do
  [[ -n "${!v}" ]] || { echo "$0: --$v is required" >&2; exit 2; }
done
proj=()
[[ -n "$project" ]] && proj=(--project "$project")
repo=$(cd "$(dirname "$0")/.." && pwd)

run() {
  if [[ $dry == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${proj[@]}" --worker=all --command "$1"
}

archive=/tmp/infinity_jax_src.tar.gz
run tar -C "$repo" --exclude=.git --exclude=.venv --exclude=runs -czf "$archive" .
run gcloud compute tpus tpu-vm scp "$archive" "$tpu:~/infinity_jax_src.tar.gz" --zone "$zone" "${proj[@]}" --worker=all
ssh_all "mkdir -p ~/infinity_jax && tar -xzf ~/infinity_jax_src.tar.gz -C ~/infinity_jax && cd ~/infinity_jax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'"
train="cd ~/infinity_jax && .venv/bin/infinity-jax train --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir")"
for a in "${extra[@]}"; do train+=" $(printf '%q' "$a")"; done
ssh_all "$train 2>&1 | tee ~/infinity_jax_train.log"
