#!/usr/bin/env bash
# Train on one machine (all its local devices).
#   launch/local.sh [--dry-run] CONFIG WORKDIR [--config.key=value ...]
# e.g. on CPU:          launch/local.sh configs/shapes.py runs/shapes --config.train.total_steps=2000
#      on one 8xH100:   launch/local.sh configs/zoo.py:layer12,mesh=h100x8-dp runs/layer12
# CONFIG is file.py[:arg] or a configs/ name[:arg] (zoo:2b,mesh=h100x8-fsdp); presets: configs/mesh_presets.py.
# --dry-run (or DRY_RUN=1) prints the commands instead of running them. CONFIG and the overrides are loaded here
# first (launch/common.sh config_loads: PYTHON, SKIP_CONFIG_CHECK=1): a bad one exits 2 with one line.
set -euo pipefail
usage="usage: $0 [--dry-run] CONFIG WORKDIR [--config.key=value ...]"
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/launch/common.sh"
parse_config_workdir "configs/shapes.py or configs/zoo.py:layer12,mesh=h100x8-dp" \
  "the run folder: checkpoints, metrics, final.json" "$@"
config_loads "$config" "${overrides[@]}"

run mkdir -p "$workdir"
run infinity-jax train --config "$config" --workdir "$workdir" "${overrides[@]}"
