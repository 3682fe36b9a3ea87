#!/usr/bin/env bash
# One process per node on a multi-node GPU cluster (each process drives all local GPUs).
# Run this script on every node with the same COORDINATOR (host:port of node 0), NUM_NODES, and
# this node's NODE_RANK, e.g. the 2B model on 4 nodes of 8xH100 (the h100x8-fsdp preset is one node:
# 1 x 8 x 1; four nodes take data=4 and four times its batch):
#   COORDINATOR=10.0.0.1:1234 NUM_NODES=4 NODE_RANK=0 launch/gpu_multinode.sh \
#       configs/zoo.py:2b,mesh=h100x8-fsdp /shared/runs/2b --config.parallel.data=4 --config.train.global_batch=2048
# usage: COORDINATOR=.. NUM_NODES=.. NODE_RANK=.. launch/gpu_multinode.sh [--dry-run] CONFIG WORKDIR [--config.key=value ...]
# The trainer reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and calls
# jax.distributed.initialize(); the workdir must be on a shared file system.
# --dry-run (or DRY_RUN=1) prints the command instead of running it. CONFIG and the overrides are loaded here
# first (launch/common.sh config_loads: PYTHON, SKIP_CONFIG_CHECK=1): a bad one exits 2 with one line.
set -euo pipefail
usage="usage: COORDINATOR=host:port NUM_NODES=N NODE_RANK=i $0 [--dry-run] CONFIG WORKDIR [--config.key=value ...]"
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/launch/common.sh"
parse_config_workdir "configs/zoo.py:2b,mesh=h100x8-fsdp" "on a file system every node shares" "$@"
[[ ${COORDINATOR:-} =~ ^[^:]+:[0-9]+$ ]] || die "set COORDINATOR=host:port of node 0 (got '${COORDINATOR:-}')"
[[ ${NUM_NODES:-} =~ ^[1-9][0-9]*$ ]] || die "set NUM_NODES to the number of nodes (got '${NUM_NODES:-}')"
[[ ${NODE_RANK:-} =~ ^[0-9]+$ ]] && (( NODE_RANK < NUM_NODES )) ||
  die "set NODE_RANK to this node's index, 0 .. $((NUM_NODES - 1)) (got '${NODE_RANK:-}')"
config_loads "$config" "${overrides[@]}"

# Let XLA use most of the GPU memory.
cmd=(env JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NUM_NODES" JAX_PROCESS_ID="$NODE_RANK"
     XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
     infinity-jax train --config "$config" --workdir "$workdir" "${overrides[@]}")
if [[ $dry == 1 ]]; then show "${cmd[@]}"; else exec "${cmd[@]}"; fi
