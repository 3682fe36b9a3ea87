"""The platform a program is built for, and TPU slices or NVIDIA GPUs to compile for from any machine.

Kernel choices (attention's 'auto', the Pallas interpret flag, bf16 weight storage in the sampler) follow
`platform()`: the default backend, or the platform set by `compiling_for` while a program for other
devices is traced. `compile_target(name)` gives the compile-only devices of hardware that is not there,
so a CPU machine can compile the training step or the sampler for it ahead of time and read that
compiler's memory analysis (`bench train|sample --memory --topology ...`):
  'v5e:2x2', 'v5p:2x2x2', ...  a TPU slice, compiled by libtpu (`pip install 'jax[tpu]'`);
  'h100', 'h200:8', 'h100:2x8' NVIDIA GPUs (one, 8 in a host, 2 hosts of 8), compiled by XLA's GPU compiler
                               from jax's CUDA plugin (`pip install 'jax[cuda12]'`, no GPU or driver needed)
                               for the device description in `GPU_MODELS`. XLA's GEMM autotuning needs the
                               device, so these compiles use cuBLAS for every GEMM (the device's autotuner
                               also tries Triton): memory and kernel choice are the GPU compiler's, no timing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re

import jax

from infinity_jax.errors import UsageError

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("infinity_jax_target_platform", default=None)
PLATFORMS = ("cpu", "gpu", "tpu")


def platform() -> str:
    """'cpu', 'gpu' or 'tpu': the platform set by `compiling_for`, else jax's default backend."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(name: str | None):
    """Within: programs are traced for `name`'s kernels, whatever this machine has (None: this machine's)."""
    if name is None:
        yield
        return
    if name not in PLATFORMS:
        raise ValueError(f"platform {name!r}: expected one of {PLATFORMS}")
    token = _TARGET.set(name)
    try:
        yield
    finally:
        _TARGET.reset(token)


@dataclasses.dataclass(frozen=True)
class GpuModel:
    """What XLA's GPU compiler needs to know of a device to compile for it without one (datasheet figures;
    the per-SM limits are those of compute capability 9.0)."""

    description: str
    memory_bytes: int  # what the scheduler and the buffer assignment plan against
    bandwidth_bytes_per_s: float
    sms: int = 132
    clock_ghz: float = 1.98
    l2_bytes: int = 50 * 2**20
    compute_capability: tuple[int, int] = (9, 0)
    shared_memory_per_sm: int = 228 * 2**10
    shared_memory_per_block_optin: int = 227 * 2**10

    def target_config(self, dnn_version: tuple[int, int, int]) -> str:
        """The device as a stream_executor.GpuTargetConfigProto in text form (the CUDA plugin's
        'target_config' option), with the cuDNN version the compiler may assume."""
        major, minor = self.compute_capability
        info = {
            "threads_per_block_limit": 1024,
            "threads_per_warp": 32,
            "shared_memory_per_block": 48 * 2**10,
            "shared_memory_per_core": self.shared_memory_per_sm,
            "shared_memory_per_block_optin": self.shared_memory_per_block_optin,
            "threads_per_core_limit": 2048,
            "core_count": self.sms,
            "fpus_per_core": 128,
            "block_dim_limit_x": 2**31 - 1,
            "block_dim_limit_y": 65535,
            "block_dim_limit_z": 65535,
            "memory_bandwidth": int(self.bandwidth_bytes_per_s),
            "l2_cache_size": self.l2_bytes,
            "clock_rate_ghz": self.clock_ghz,
            "device_memory_size": self.memory_bytes,
            "registers_per_core_limit": 65536,
            "registers_per_block_limit": 65536,
        }
        fields = "\n".join(f"  {k}: {v}" for k, v in info.items())
        d = dict(zip(("major", "minor", "patch"), dnn_version))
        return (
            f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
            f'platform_name: "CUDA"\n'
            f"dnn_version_info {{ major: {d['major']} minor: {d['minor']} patch: {d['patch']} }}\n"
            f'device_description_str: "{self.description}"\n'
        )


GPU_MODELS = {
    "h100": GpuModel("NVIDIA H100 80GB HBM3", memory_bytes=80 * 2**30, bandwidth_bytes_per_s=3.35e12),
    "h200": GpuModel("NVIDIA H200", memory_bytes=141 * 10**9, bandwidth_bytes_per_s=4.8e12),
}
_GPU_NAME = re.compile(r"^(?P<model>[a-z0-9]+)(?::(?:(?P<hosts>\d+)x)?(?P<per_host>\d+))?$")


def parse_gpu_target(name: str) -> tuple[GpuModel, int, int] | None:
    """(model, hosts, GPUs per host) for 'h100', 'h100:8' or 'h100:2x8'; None for a name that is not a GPU's."""
    m = _GPU_NAME.match(name.strip().lower())
    if m is None or m["model"] not in GPU_MODELS:
        return None
    hosts, per_host = int(m["hosts"] or 1), int(m["per_host"] or 1)
    if hosts < 1 or per_host < 1:
        raise UsageError(f"GPU target {name!r}: expected MODEL[:[HOSTSx]GPUS] with counts >= 1, e.g. h100:8")
    return GPU_MODELS[m["model"]], hosts, per_host


def _cudnn_version() -> tuple[int, int, int]:
    """The installed cuDNN's version (the library that builds the attention kernels' graphs at compile time)."""
    from jax._src.lib import cuda_versions  # present with the CUDA plugin

    if cuda_versions is None:
        raise RuntimeError("jax's CUDA plugin is not installed")
    v = cuda_versions.cudnn_get_version()  # e.g. 92800 for 9.28.0
    return v // 10000, v // 100 % 100, v % 100


@dataclasses.dataclass(frozen=True)
class CompileTarget:
    """Hardware that is not there, to compile for: its compile-only devices, the platform whose kernels the
    program is traced for, and the XLA options a compile for it needs."""

    devices: list
    platform: str
    compiler_options: dict
    gpu: GpuModel | None = None  # the GPU's description (bandwidth for benchmarks.hlo_cost), for GPU targets


# Without the device XLA cannot autotune GEMM tiles, and its untuned Triton tiles fail on some of the
# 2B model's shapes ("Couldn't find output tile sizes"); cuBLAS needs no autotuning.
GPU_COMPILE_ONLY_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def compile_target(name: str) -> CompileTarget:
    """The CompileTarget of `name`: NVIDIA GPUs ('h100', 'h200:8', 'h100:2x8') or a TPU slice ('v5e:2x2',
    'v5p:2x2x2'), for compiling without them (see the module docstring)."""
    from jax.experimental import topologies  # loads libtpu / the CUDA plugin: only when a target is asked for

    gpu = parse_gpu_target(name)
    try:
        if gpu is not None:
            model, hosts, per_host = gpu
            desc = topologies.get_topology_desc(
                platform="cuda",
                topology_name="",
                target_config=model.target_config(_cudnn_version()),
                topology=f"1x{hosts}x{per_host}",
            )
            return CompileTarget(list(desc.devices), "gpu", dict(GPU_COMPILE_ONLY_OPTIONS), model)
        desc = topologies.get_topology_desc(platform="tpu", topology_name=name)
        return CompileTarget(list(desc.devices), "tpu", {})
    except Exception as e:  # no plugin / libtpu, or a name it does not know: both are the user's to fix
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if gpu is not None:
            raise UsageError(
                f"GPU target {name!r}: {why}; compiling for NVIDIA GPUs needs jax's CUDA plugin with cuDNN on "
                "the path (bash launch/install_gpu_compiler.sh, then PYTHONPATH=.gpu-compiler JAX_PLATFORMS=cpu; "
                "or pip install 'jax[cuda12]'); no GPU needed"
            ) from e
        raise UsageError(
            f"TPU topology {name!r}: {why}; compiling for a TPU topology needs libtpu (pip install 'jax[tpu]') "
            f"and a name such as v5e:2x2 or v5p:2x2x2 (or a GPU target: {', '.join(GPU_MODELS)}[:[HOSTSx]GPUS])"
        ) from e
