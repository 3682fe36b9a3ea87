"""A stand-in model and data for the training machinery's tests, and a subprocess worker.

StandIn: a one-block transformer-ish net (B, L) tokens -> (B, L, V) logits whose params carry the
logical names 'embed', 'mlp', 'heads', 'vocab', 'norm', so FSDP and TP really shard something.
TokenData: deterministic synthetic batches with get_state/set_state, each process its own rows.

Run as a worker: python -m tests.train_helpers WORKDIR [--steps N] [--every K] [--hang-at-save S]
  [--until U] [--coordinator ADDR --num-processes N --process-id I] [--rules R --fsdp F --tensor T]
prints one JSON line per step ({"step": s, "loss": ..., "start": ...}) and 'DONE <stopped>' at the end.
With --until U it first trains to step U (saving there), then calls run_training again, which
resumes from that checkpoint and trains to N.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

VOCAB, LENGTH, EMBED, MLP, HEADS = 32, 8, 16, 32, 2

# Faster-compiling XLA for the tests: the suite is bound by compiling (on a 2-core CPU two thirds of its
# in-process time is XLA compiling small programs that then run a few steps). LLVM at -O0 and XLA's older
# loop emitters instead of its MLIR fusion emitters halve the compile time of the tiny train steps
# (28 -> 14 s for shapes:tiny's transformer and tokenizer) and slow their steps 2-3x (40 -> 139 ms,
# 278 -> 484 ms), which five of the slowest test files gain from: 438 -> 279 s. conftest.py sets them for
# the test process; tests that start processes with XLA_FLAGS of their own build them with xla_flags().
# (The short demo, thousands of steps, runs with XLA's defaults.)
# INFINITY_TEST_XLA=default runs the tests under XLA's own defaults, as users compile (the parity
# subset does so in tests/test_parity_default_xla.py).
XLA_DEFAULTS = os.environ.get("INFINITY_TEST_XLA", "") == "default"
FAST_COMPILE = "" if XLA_DEFAULTS else "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
# the same as compile options of one program (Sampler(compiler_options=...)): LLVM -O0, same numbers
FAST_OPTIONS: dict = {} if XLA_DEFAULTS else {"xla_backend_optimization_level": 0}


def xla_flags(*flags: str) -> str:
    """XLA_FLAGS for a test (sub)process: `flags` plus FAST_COMPILE."""
    return " ".join(f for f in (*flags, FAST_COMPILE) if f)


def standin_module(dtype="float32"):
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    def p(init, names):
        return nn.with_logical_partitioning(init, names)

    class StandIn(nn.Module):
        """tokens: (B, L) int32 -> logits (B, L, VOCAB)."""

        @nn.compact
        def __call__(self, tokens):
            dt = jnp.dtype(dtype)
            emb = self.param("embedding", p(nn.initializers.normal(0.5), ("vocab", "embed")), (VOCAB, EMBED))
            x = jnp.take(emb, tokens, axis=0).astype(dt)
            x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
            h = nn.LayerNorm(
                dtype=dt,
                scale_init=p(nn.initializers.ones, ("norm",)),
                bias_init=p(nn.initializers.zeros, ("norm",)),
                name="ln",
            )(x)
            qkv = nn.Dense(
                3 * EMBED,
                dtype=dt,
                name="qkv",
                kernel_init=p(nn.initializers.lecun_normal(), ("embed", "heads")),
                bias_init=p(nn.initializers.zeros, ("heads",)),
            )(h)
            q, k, v = jnp.split(qkv.reshape(*qkv.shape[:2], 3 * HEADS, EMBED // HEADS), 3, axis=2)
            att = jnp.einsum("blhd,bmhd->bhlm", q, k).astype(jnp.float32) / np.sqrt(EMBED // HEADS)
            att = jax.nn.softmax(att, axis=-1).astype(dt)
            o = jnp.einsum("bhlm,bmhd->blhd", att, v).reshape(*x.shape[:2], EMBED)
            x = x + nn.Dense(
                EMBED,
                dtype=dt,
                name="proj",
                kernel_init=p(nn.initializers.lecun_normal(), ("heads", "embed")),
                bias_init=p(nn.initializers.zeros, ("embed",)),
            )(o)
            h = nn.Dense(
                MLP,
                dtype=dt,
                name="fc1",
                kernel_init=p(nn.initializers.lecun_normal(), ("embed", "mlp")),
                bias_init=p(nn.initializers.zeros, ("mlp",)),
            )(x)
            x = x + nn.Dense(
                EMBED,
                dtype=dt,
                name="fc2",
                kernel_init=p(nn.initializers.lecun_normal(), ("mlp", "embed")),
                bias_init=p(nn.initializers.zeros, ("embed",)),
            )(nn.gelu(h))
            return nn.Dense(
                VOCAB,
                dtype=dt,
                name="head",
                kernel_init=p(nn.initializers.lecun_normal(), ("embed", "vocab")),
                bias_init=p(nn.initializers.zeros, ("vocab",)),
            )(x)

    return StandIn()


def make_fns(dtype="float32"):
    """(init_params, loss_fn) for the stand-in: next-token cross-entropy on TokenData batches."""
    import jax.numpy as jnp
    import optax

    model = standin_module(dtype)

    def init_params(rng):
        return model.init(rng, jnp.zeros((1, LENGTH), jnp.int32))["params"]

    def loss_fn(params, batch, rng):
        logits = model.apply({"params": params}, batch["tokens"]).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        # a second 'per-scale'-like metric, to check that extra metrics flow through
        return ce.mean(), {"loss_first_half": ce[:, : LENGTH // 2].mean()}

    return init_params, loss_fn


class TokenData:
    """Batch i (global) is a pure function of (seed, i); this process yields its rows only."""

    def __init__(self, global_batch: int, seed: int = 0, process_index: int = 0, process_count: int = 1):
        self.global_batch, self.seed, self.index = global_batch, seed, 0
        self.rows = slice(
            process_index * global_batch // process_count, (process_index + 1) * global_batch // process_count
        )

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng((self.seed, self.index))
        tokens = rng.integers(0, VOCAB, (self.global_batch, LENGTH + 1), dtype=np.int32)
        tokens[:, 1::2] = (tokens[:, 0:-1:2] * 3 + 1) % VOCAB  # learnable structure
        self.index += 1
        return {"tokens": tokens[self.rows, :-1], "targets": tokens[self.rows, 1:]}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def tiny_config(steps=5, rules="dp", fsdp=1, tensor=1, every=0, grad_accum=1, global_batch=16):
    from infinity_jax import config_util

    c = config_util.load_config("train_defaults:tiny")  # as a command loads it (completed by run_config)
    c.train.total_steps, c.train.global_batch, c.train.grad_accum = steps, global_batch, grad_accum
    c.train.log_every = 1
    c.optim.base_lr = 0.05  # peak 0.05 * 16 / 256 ~ 3e-3: the loss visibly moves in a few steps
    c.optim.warmup_steps = 1
    c.parallel.rules, c.parallel.fsdp, c.parallel.tensor = rules, fsdp, tensor
    c.checkpoint.every = every
    return c


def _main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--hang-at-save", type=int, default=-1)
    ap.add_argument("--until", type=int, default=None, help="first stop at this step, then resume to --steps")
    ap.add_argument("--coordinator")
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--rules", default="dp")
    ap.add_argument("--fsdp", type=int, default=1)
    ap.add_argument("--tensor", type=int, default=1)
    a = ap.parse_args(argv)

    from infinity_jax.train import distributed

    if a.coordinator:
        distributed.initialize_distributed(a.coordinator, a.num_processes, a.process_id)
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from infinity_jax import checkpoint
    from infinity_jax.train import loop

    if a.hang_at_save >= 0:  # stall inside a save of that step, after part of it is written
        orig = checkpoint.DataStateHandler.save

        def save(self, directory, args):
            orig(self, directory, args)
            if directory.parent.name.split(".")[0] == str(a.hang_at_save):
                open(os.path.join(a.workdir, "MID_SAVE"), "w").close()
                import time

                time.sleep(600)

        checkpoint.DataStateHandler.save = save

    cfg = tiny_config(a.steps, a.rules, a.fsdp, a.tensor, every=a.every)
    init_params, loss_fn = make_fns()
    for until in ([a.until] if a.until else []) + [None]:
        data = TokenData(cfg.train.global_batch, 0, jax.process_index(), jax.process_count())
        res = loop.run_training(cfg, a.workdir, init_params=init_params, loss_fn=loss_fn, data=data, until_step=until)
        for row in res.history:
            print(
                json.dumps(
                    {"step": row["step"], "loss": row["loss"], "start": res.start_step, "process": jax.process_index()}
                ),
                flush=True,
            )
    print("DONE", res.stopped, flush=True)


if __name__ == "__main__":
    _main()


# ------------------------------------------------------------------ shared pytest fixtures
# (imported by the test modules that use them: `from tests.train_helpers import compile_cache, ...`)
import pytest  # noqa: E402

STEPS = 6  # every in-process run uses the same step count, so equal programs compile once


def _set_compile_cache(path):
    import jax
    from jax._src import compilation_cache

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()


# Test modules import these fixtures, which makes pytest register one instance per module; the
# values are memoised here so the session really has one cache directory and one reference run.
_SESSION: dict = {}


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for this session (also handed to subprocess workers via the env):
    the same train step is compiled once, not once per run/process."""
    if "cache" not in _SESSION:
        _SESSION["cache"] = path = str(tmp_path_factory.mktemp("xla_cache"))
        _SESSION["old_env"] = os.environ.get("JAX_COMPILATION_CACHE_DIR")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
        _set_compile_cache(path)
    yield _SESSION["cache"]
    if _SESSION.pop("cache", None) is not None:  # the first teardown restores the settings
        _set_compile_cache(None)
        old = _SESSION.pop("old_env")
        if old is None:
            os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        else:
            os.environ["JAX_COMPILATION_CACHE_DIR"] = old


def run(
    workdir,
    *,
    n_devices=None,
    rules="dp",
    fsdp=1,
    tensor=1,
    every=0,
    grad_accum=1,
    ema=0.0,
    data=None,
    loss_fn=None,
    hooks=(),
    time_limit_s=0.0,
    **kw,
):
    """run_training of the stand-in for STEPS steps on the first n_devices devices."""
    import jax

    from infinity_jax import parallel
    from infinity_jax.train import loop

    cfg = tiny_config(STEPS, rules, fsdp, tensor, every=every, grad_accum=grad_accum)
    cfg.checkpoint.enabled = bool(every) or kw.pop("save", False)
    cfg.optim.ema_decay = ema
    cfg.train.time_limit_s = time_limit_s
    devices = jax.devices()[: n_devices or jax.device_count()]
    mesh = parallel.make_mesh(-1, fsdp, tensor, devices=devices)
    init_params, default_loss = make_fns()
    return loop.run_training(
        cfg,
        str(workdir),
        init_params=init_params,
        loss_fn=loss_fn or default_loss,
        data=data or TokenData(cfg.train.global_batch),
        mesh=mesh,
        hooks=hooks,
        **kw,
    )


@pytest.fixture(scope="session")
def reference_run(compile_cache, tmp_path_factory):
    """The stand-in trained for STEPS steps on one device (no checkpoints)."""
    if "reference" not in _SESSION:
        _SESSION["reference"] = run(tmp_path_factory.mktemp("ref"), n_devices=1)
    return _SESSION["reference"]
