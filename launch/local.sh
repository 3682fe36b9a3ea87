#!/usr/bin/env bash
# Train on one machine (all its local devices).
#   launch/local.sh [--dry-run] CONFIG WORKDIR [--config.key=value ...]
# e.g. on CPU:          launch/local.sh configs/shapes.py runs/shapes --config.train.total_steps=2000
#      on one 8xH100:   launch/local.sh configs/zoo.py:layer12,mesh=h100x8-dp runs/layer12
# CONFIG is file.py[:arg] or a configs/ name[:arg] (zoo:2b,mesh=h100x8-fsdp); presets: configs/mesh_presets.py.
# --dry-run (or DRY_RUN=1) prints the commands instead of running them.
set -euo pipefail
usage="usage: $0 [--dry-run] CONFIG WORKDIR [--config.key=value ...]"
die() { echo "$0: $*" >&2; echo "$usage" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
dry=${DRY_RUN:-0} pos=() overrides=()
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    --config.*) overrides+=("$a") ;;
    -*) die "unknown argument '$a' (overrides look like --config.key=value)" ;;
    *) pos+=("$a") ;;
  esac
done
[[ ${#pos[@]} -ge 1 ]] || die "missing CONFIG, e.g. configs/shapes.py or configs/zoo.py:layer12,mesh=h100x8-dp"
[[ ${#pos[@]} -ge 2 ]] || die "missing WORKDIR (the run folder: checkpoints, metrics, final.json)"
[[ ${#pos[@]} -eq 2 ]] || die "unexpected argument '${pos[2]}' after CONFIG WORKDIR"
config=${pos[0]} workdir=${pos[1]}
file=${config%%:*}
[[ -f "$file" || -f "$repo/configs/$file.py" ]] ||
  die "config file '$file' does not exist (from CONFIG '$config'; expected file.py[:arg] or a configs/ name)"

quote() {  # one word for a shell command line: as it is when safe, else in single quotes
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+~-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() {  # one line a shell can run again
  local out="" a
  for a in "$@"; do out+="$(quote "$a") "; done
  echo "${out% }"
}
run() { if [[ $dry == 1 ]]; then show "$@"; else "$@"; fi; }

run mkdir -p "$workdir"
run infinity-jax train --config "$config" --workdir "$workdir" "${overrides[@]}"
