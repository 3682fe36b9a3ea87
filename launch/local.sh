#!/usr/bin/env bash
# Train on one machine (all its local devices).
#   launch/local.sh CONFIG WORKDIR [--config.overrides ...]
# e.g. launch/local.sh configs/shapes.py runs/shapes --config.train.steps=2000
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
[[ -f "${config%%:*}" ]] || { echo "$0: config file '${config%%:*}' does not exist" >&2; exit 2; }
mkdir -p "$workdir"
exec infinity-jax train --config "$config" --workdir "$workdir" "$@"
