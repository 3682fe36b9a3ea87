#!/usr/bin/env bash
# XLA's GPU compiler for a machine without a GPU: jax's CUDA plugin (for the jax installed here), cuDNN
# (builds the fused attention kernels' graphs at compile time) and ptxas, into DIR (default
# .gpu-compiler/), kept off the environment's path so that jax here stays a CPU jax. Then
#   PYTHONPATH=DIR JAX_PLATFORMS=cpu infinity-jax bench sample --memory --topology h100 ...
# compiles for an H100 (h200, h100:8, h100:2x8: infinity_jax/targets.py). About 1.7 GB.
set -euo pipefail
dir=${1:-.gpu-compiler}
python=${PYTHON:-python}
jax_version=$("$python" -c 'import jax; print(jax.__version__)')
echo "installing jax's CUDA plugin $jax_version, cuDNN and ptxas into $dir" >&2
rm -rf "$dir.partial"
"$python" -m pip install -q --no-deps --target "$dir.partial" \
    "jax-cuda12-plugin==$jax_version" "jax-cuda12-pjrt==$jax_version" \
    "nvidia-cudnn-cu12>=9.8,<10" "nvidia-cuda-nvcc-cu12>=12.6" "nvidia-cuda-runtime-cu12>=12.1"
rm -rf "$dir" && mv "$dir.partial" "$dir"  # whole or not at all
echo "done: PYTHONPATH=$dir JAX_PLATFORMS=cpu infinity-jax bench sample|train --memory --topology h100 ..." >&2
