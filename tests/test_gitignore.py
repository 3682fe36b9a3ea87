"""What the commands write at their default paths stays out of git; the sources never do."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(
    shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")), reason="needs git and a checkout"
)
def test_default_output_folders_are_ignored_and_sources_are_not():
    # data/: the configs' data.path defaults (data/shapes, data/infinity) that `data prepare --out` builds
    ignored = ["data/shapes/image_folder/1.0.0/dataset_info.json", "runs/demo/final.json", ".gpu-compiler/x.py"]
    kept = ["infinity_jax/data/sources.py", "configs/shapes.py", "tests/test_gitignore.py"]
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *ignored, *kept], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.stdout.split() == ignored, done.stderr
