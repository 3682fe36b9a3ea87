"""Multi-host setup and per-host data: one process per host (TPU) or per node/GPU set (GPU cluster).

`initialize_distributed()` must run before anything touches a JAX device. Where it finds:
  - explicit arguments, or JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID): those;
  - a Slurm job with more than one task, a multi-worker Cloud TPU, Open MPI: `jax.distributed.initialize()`
    with no arguments, which auto-detects them;
  - none of these: a single process, nothing to do.
Every process then feeds its own slice of the global batch (`process_batch_slice`), and
`global_batch` assembles the sharded global array with make_array_from_process_local_data.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from infinity_jax import parallel


def _cluster_detected() -> bool:
    env = os.environ
    if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_collectives: str | None = "gloo",
) -> bool:
    """Start jax.distributed if this is a multi-process job; True if it was started (or already was).

    cpu_collectives: implementation for cross-process collectives on CPU devices ('gloo'; None to
    leave JAX's setting). It only concerns the CPU backend, so it is harmless on TPU/GPU.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    explicit = coordinator_address is not None
    if not explicit and not _cluster_detected():
        return False
    if explicit and (num_processes is None or process_id is None):
        raise ValueError(
            f"coordinator {coordinator_address!r} given but num_processes={num_processes} and "
            f"process_id={process_id}: set both (or JAX_NUM_PROCESSES / JAX_PROCESS_ID)"
        )
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0


def process_batch_slice(global_batch: int) -> tuple[int, int]:
    """(start, size) of this process's rows of a global batch of `global_batch` examples."""
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} does not divide over {n} processes")
    size = global_batch // n
    return jax.process_index() * size, size


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Global jax.Arrays, leading axis sharded over data x fsdp, from each process's local rows."""

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(parallel.batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(one, local_batch)


def any_process(flag: bool) -> bool:
    """True if `flag` is true on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def sync(name: str) -> None:
    """Barrier across processes (no-op with one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
