"""infinity_jax: Infinity (bitwise visual autoregressive text-to-image) in JAX/Flax."""

import importlib.util as _util
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _configs_from_checkout():
    """Run from a source checkout on PYTHONPATH, with no install (the accelerator machine): the repository's
    configs/ becomes the package infinity_jax.configs, as pyproject.toml's package-dir maps it in an install."""
    name = __name__ + ".configs"
    if _util.find_spec(name) is not None:
        return
    folder = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "configs")
    init = _os.path.join(folder, "__init__.py")
    if not _os.path.isfile(init):
        return
    spec = _util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    module = _util.module_from_spec(spec)
    _sys.modules[name] = module
    spec.loader.exec_module(module)
    globals()["configs"] = module  # what an import of the submodule sets on its package


_configs_from_checkout()
