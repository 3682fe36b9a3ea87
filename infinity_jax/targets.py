"""The platform a program is built for, and TPU topologies to compile for from any machine.

Kernel choices (attention's 'auto', the Pallas interpret flag, bf16 weight storage in the sampler) follow
`platform()`: the default backend, or the platform set by `compiling_for` while a program for other
devices is traced. With libtpu installed (`pip install 'jax[tpu]'`), `topology_devices('v5p:2x2x2')` gives
the devices of a TPU slice that is not there, so a CPU machine can compile the training step or the sampler
for it ahead of time and read XLA's TPU memory analysis (`bench train|sample --memory --topology ...`).
"""

from __future__ import annotations

import contextlib
import contextvars

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


def topology_devices(name: str) -> list:
    """The devices of the TPU topology `name` (e.g. 'v5e:2x2', 'v5p:2x2x2'), for compiling without them."""
    from jax.experimental import topologies  # loads libtpu: only when a topology is asked for

    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # no libtpu, or a name it does not know: both are the user's to fix
        raise UsageError(
            f"TPU topology {name!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; compiling for a "
            "TPU topology needs libtpu (pip install 'jax[tpu]') and a name such as v5e:2x2 or v5p:2x2x2"
        ) from e
