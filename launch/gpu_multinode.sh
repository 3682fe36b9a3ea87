#!/usr/bin/env bash
# One process per node on a multi-node GPU cluster (each process drives all local GPUs).
# Run this script on every node with the same COORDINATOR (host:port of node 0), NUM_NODES, and
# this node's NODE_RANK:
#   COORDINATOR=10.0.0.1:1234 NUM_NODES=4 NODE_RANK=0 launch/gpu_multinode.sh CONFIG WORKDIR [overrides...]
# The trainer reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and calls
# jax.distributed.initialize(); the workdir must be on a shared file system.
set -euo pipefail
: "${COORDINATOR:?set COORDINATOR=host:port of node 0}" "${NUM_NODES:?set NUM_NODES}" "${NODE_RANK:?set NODE_RANK}"
if [[ $# -lt 2 ]]; then
  echo "usage: COORDINATOR=.. NUM_NODES=.. NODE_RANK=.. $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
export JAX_COORDINATOR_ADDRESS=$COORDINATOR JAX_NUM_PROCESSES=$NUM_NODES JAX_PROCESS_ID=$NODE_RANK
# Let XLA use most of the GPU memory and overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec infinity-jax train --config "$config" --workdir "$workdir" "$@"
