"""Sampling needs only jax/flax/optax/orbax/ml_collections: `infinity-jax sample` and `infinity-jax bench
sample|train` import neither the data stack (tensorflow_datasets, grain, array_record) nor torch.

Each test runs a fresh Python with those modules blocked (`sys.modules[name] = None` makes importing
them fail), so an eager import anywhere on the way fails the command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.train_helpers import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("tensorflow_datasets", "grain", "array_record", "torch", "tensorflow")

PRELUDE = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # `import name` now raises ImportError
from infinity_jax import commands
"""


def _run(script: str, tmp_path) -> str:
    code = PRELUDE + textwrap.dedent(script) + f"\nassert all(sys.modules[n] is None for n in {BLOCKED!r})\n"
    env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu")  # one device: the imports are the point
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_commands_import_no_data_stack_and_no_torch(tmp_path):
    out = _run(
        """
        import importlib
        for m in ("infinity_jax.commands.sample", "infinity_jax.commands.bench", "infinity_jax.benchmarks.sampler",
                  "infinity_jax.benchmarks.training", "infinity_jax.benchmarks.data", "infinity_jax.sample",
                  "infinity_jax.checkpoint", "infinity_jax.generate",
                  "infinity_jax.text.encoder", "infinity_jax.train.step", "infinity_jax.train.state"):
            importlib.import_module(m)
        assert commands.main(["bench", "sample", "--config", "tiny", "--schedule", "1x1,2x2", "--vae-config", "none",
                         "--runs", "1", "--warmup", "0", "--text-len", "4"]) == 0
        assert commands.main(["bench", "train", "--memory", "--config", "infinity:tiny", "--schedule", "1x1,2x2",
                         "--batch", "2", "--text-len", "4"]) == 0
    """,
        tmp_path,
    )
    table = out.splitlines()
    assert table[1].split()[:2] == ["tiny", "1x1,2x2"] and table[3].split()[:2] == ["infinity:tiny", "32x32"]


def test_sample_command_imports_no_data_stack_and_no_torch(tmp_path):
    """A training run folder (orbax checkpoint and config, the VAE's params in an npz file) and a Hugging
    Face T5 folder: the checkpoint reader, the VAE and text-encoder builders of runs, the T5 loader."""
    _run(
        """
        import os
        import jax
        from infinity_jax import config_util
        from infinity_jax.checkpoint import Checkpointer
        from infinity_jax import fileio
        from infinity_jax.convert.t5 import save_t5
        from infinity_jax.model.transformer import InfinityConfig, init_params
        from infinity_jax.text.encoder import TextEncoder
        from infinity_jax.text.t5 import T5Config
        from infinity_jax.tokenizer import vae as vae_lib
        from infinity_jax.train import optim
        from infinity_jax.train.state import TrainState

        d = sys.argv[1]
        cfg = config_util.load_config("shapes:tiny")
        cfg.schedule = "1x1,2x2"
        model_cfg = InfinityConfig.from_dict(cfg.model)
        vae = vae_lib.from_config(config_util.load_config(str(cfg.vae.config)))
        cfg.vae.params = os.path.join(d, "vae.npz")
        fileio.save_params(jax.device_get(vae_lib.init_params(vae, jax.random.key(1))), cfg.vae.params)
        tx, _ = optim.make_optimizer(cfg.optim, 10, 2)
        with Checkpointer(os.path.join(d, "run", "checkpoints"), async_save=False) as ck:
            ck.save(TrainState.create(init_params(model_cfg, jax.random.key(0)), tx, jax.random.key(0)), b"", cfg,
                    wait=True)
        t5 = TextEncoder.from_config(T5Config.preset("tiny-byt5", d_model=model_cfg.text_channels))
        save_t5(os.path.join(d, "t5"), t5.config, t5.params)
        assert commands.main(["sample", "--checkpoint", os.path.join(d, "run"), "--text-encoder", os.path.join(d, "t5"),
                         "--prompt", "a red circle", "--no-progress", "--out", os.path.join(d, "out")]) == 0
        assert os.path.isfile(os.path.join(d, "out", "samples.json"))
    """,
        tmp_path,
    )


def test_sample_help_imports_no_jax(tmp_path):
    """`infinity-jax sample --help` answers at once: the command module imports the sampler (and jax) only
    once the flags parse."""
    out = _run(
        """
        try:
            commands.main(["sample", "--help"])
        except SystemExit as e:
            assert e.code == 0, e.code
        assert "jax" not in sys.modules and "infinity_jax.generate" not in sys.modules, sorted(sys.modules)
    """,
        tmp_path,
    )
    assert "usage: infinity-jax sample" in out and "(default: the run config's sample.cfg, else 3)" in " ".join(
        out.split()
    )
