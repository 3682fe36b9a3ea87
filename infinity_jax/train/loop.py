"""The training loop: sharded state, jitted step, checkpoints, resume, preemption, metrics, hooks.

    result = run_training(config, workdir, init_params=..., loss_fn=... | step_fn=..., data=..., hooks=...)

What it needs from the model side:
  init_params(rng) -> params    boxed with logical axis names (`model.init(rng, ...)['params']`);
                                only shapes and annotations are traced, then it runs jitted with
                                the output already sharded (no full copy on one device).
  loss_fn(params, batch, rng[, frozen]) -> (loss, metrics)
                                the loop wraps it with make_step (grad accumulation, compute
                                dtype, clipping, AdamW, EMA); or, instead,
  step_fn(state, batch, rng) -> (state, metrics)
                                a pure step of your own that ends in state.apply_gradients(grads).
  data                          an iterator of this process's rows of the global batch (a tree
                                of numpy arrays, leading axis global_batch / process_count) with
                                get_state() / set_state(state) (grain iterators have them).
What it does, from `config` (configs/train_defaults.py):
  - a Mesh(data, fsdp, tensor) and the logical rules `parallel.rules`; params and optimizer state
    sharded by the rules, the batch over data x fsdp; the step jitted with explicit in/out
    shardings and the state donated;
  - resumes from the latest complete checkpoint in `workdir/checkpoints` (state, rng, data
    iterator); saves every `checkpoint.every` steps, at the end, and on SIGTERM (then returns
    with result.stopped == 'preempted'), async, keeping the last `checkpoint.keep`;
  - with `train.time_limit_s` > 0, stops (saved) at the first logging step past that many seconds
    of the call and returns with result.stopped == 'time_limit': a finished run (FINISHED) whose
    lr schedule was cut short, as a time-budgeted run (the demo) wants;
  - every `train.log_every` steps writes loss, the step's other metrics, grad norm, lr, step
    time, images/s, tokens/s and MFU to workdir/metrics.jsonl and workdir/tb (process 0 only);
  - a NaN/Inf loss raises NonFiniteLossError naming the step; nothing is saved after it.
Step keys are fold_in(base key, step), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from infinity_jax import parallel
from infinity_jax.checkpoint import Checkpointer
from infinity_jax.train import distributed, metrics as metrics_lib, optim
from infinity_jax.train.state import TrainState, make_step, state_shardings, step_key

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; `step` is the update that produced it (1-based)."""

    def __init__(self, step: int, value: float, last_checkpoint: int | None):
        super().__init__(f"loss is {value} at step {step}; stopped without saving "
                         f"(last good checkpoint: step {last_checkpoint})")
        self.step, self.value, self.last_checkpoint = step, value, last_checkpoint


@dataclasses.dataclass
class Hook:
    """Periodic work after step `n * every` (e.g. a sample grid for fixed prompts).

    fn(step, state, writer) runs on every process (it may run sharded computations); it may
    return a dict of scalars, which is logged at that step. every=None takes train.hook_every.
    The next step donates `state`: copy anything the hook wants to keep (writer.workdir is the
    run's folder, for images and such; write files from process 0 only).
    """
    fn: Callable[[int, TrainState, metrics_lib.MetricsWriter], Mapping[str, float] | None]
    every: int | None = None
    name: str = "hook"


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    history: list[dict]         # one dict per step run in this call: {'step': s, 'loss': ..., ...}
    stopped: str                # 'done' | 'time_limit' | 'until_step' | 'preempted'
    start_step: int             # the step this call started from (> 0 after a resume)
    workdir: str


FINISHED = ("done", "time_limit")  # TrainResult.stopped of a run to evaluate and report (not to resume)


class _Preemption:
    """SIGTERM sets a flag; the loop saves and returns at the next step boundary."""

    def __init__(self):
        self.flag = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def build_mesh(config) -> Mesh:
    p = config.parallel
    return parallel.make_mesh(data=p.data, fsdp=p.fsdp, tensor=p.tensor)


def _check_batch(local, global_batch: int):
    want = global_batch // jax.process_count()
    for x in jax.tree.leaves(local):
        if np.shape(x)[0] != want:
            raise ValueError(f"data gave a local batch with leading axis {np.shape(x)[0]}; expected "
                             f"train.global_batch / process_count = {global_batch} / {jax.process_count()} = {want}")


def run_training(config, workdir: str, *, init_params: Callable[[jax.Array], Any], data,
                 loss_fn: Callable | None = None, step_fn: Callable | None = None,
                 hooks: Sequence[Hook] = (), mesh: Mesh | None = None,
                 flops_per_step: float | None = None, tokens_per_example: float | None = None,
                 until_step: int | None = None, frozen: Any = None) -> TrainResult:
    """Train to config.train.total_steps (resuming from workdir if it holds a checkpoint).

    flops_per_step: model FLOPs of one update (forward + backward over the global batch), for MFU;
      if None, XLA's cost analysis of the compiled step is used (logged mfu_flops_from_model=0).
    tokens_per_example: for tokens/s (e.g. the schedule's token count per image).
    mesh: overrides the mesh built from config.parallel (e.g. a subset of devices).
    until_step: stop (saving a checkpoint) once this step is reached, before total_steps; the
      schedule still runs to total_steps, so a later call continues the same run.
    frozen: arrays the loss needs but never trains (VAE, text encoder), as host or device arrays,
      boxed with logical names to shard them (plain leaves are replicated). They ride in
      state.frozen, are passed as loss_fn's 4th argument, and are not checkpointed.
    """
    if (loss_fn is None) == (step_fn is None):
        raise ValueError("run_training: give exactly one of loss_fn= or step_fn=")
    t, ck = config.train, config.checkpoint
    call_t0, time_limit = time.perf_counter(), float(t.get("time_limit_s", 0.0))
    if t.global_batch % (jax.process_count() * t.grad_accum):
        raise ValueError(f"train.global_batch={t.global_batch} must divide by process_count "
                         f"({jax.process_count()}) x grad_accum ({t.grad_accum})")
    mesh = build_mesh(config) if mesh is None else mesh
    rules = config.parallel.rules
    tx, schedule = optim.make_optimizer(config.optim, t.total_steps, t.global_batch)
    if step_fn is None:
        dtype = jnp.dtype(t.compute_dtype)
        step_fn = make_step(loss_fn, schedule, t.grad_accum, None if dtype == jnp.float32 else dtype, mesh)

    # ---- state: shapes and shardings first, then a sharded init or a restore
    init_key, state_key = jax.random.split(jax.random.key(config.seed))
    logical = nn.get_partition_spec(jax.eval_shape(init_params, init_key))
    ema_decay = float(config.optim.get("ema_decay", 0.0))

    def init_state():
        return TrainState.create(init_params(init_key), tx, state_key, ema_decay)

    abstract = jax.eval_shape(init_state)
    shardings = state_shardings(abstract, logical, mesh, rules)
    saving = ck.get("enabled", True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=ck.keep, async_save=ck.async_save) if saving else None
    resumed_from = ckpt.latest_step() if saving else None
    if resumed_from is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        state, data_state = ckpt.restore(target, resumed_from)
        data.set_state(data_state)
        log.info("resumed from %s/checkpoints step %d", workdir, resumed_from)
    else:
        with _sharding_context(mesh, rules):
            state = jax.jit(init_state, out_shardings=shardings)()

    if frozen is not None:
        frozen_sh = parallel.logical_to_mesh_sharding(nn.get_partition_spec(frozen), mesh, rules)
        frozen_arrays = jax.tree.map(_to_global, nn.meta.unbox(frozen), frozen_sh)
        state = state.replace(frozen=frozen_arrays)
        shardings = shardings.replace(frozen=frozen_sh)

    writer = metrics_lib.MetricsWriter(workdir, tensorboard=t.get("tensorboard", True))
    start = int(jax.device_get(state.step))
    history: list[dict] = []
    hooks = [dataclasses.replace(h, every=h.every or t.hook_every) for h in hooks]
    peak = metrics_lib.peak_flops_per_device()
    rep = NamedSharding(mesh, P())

    def wrapped(st, batch):
        return step_fn(st, batch, step_key(st))

    bar = None
    if writer.enabled and t.get("progress_bar", True):
        from tqdm import tqdm
        bar = tqdm(total=t.total_steps, initial=start, desc="train", dynamic_ncols=True)

    compiled, pending = None, []
    window_t0 = time.perf_counter()
    stopped = "done" if until_step is None or until_step >= t.total_steps else "until_step"
    try:
        with _Preemption() as preempt:
            end = t.total_steps if until_step is None else min(until_step, t.total_steps)
            for s in range(start, end):
                local = next(data)
                if compiled is None:
                    _check_batch(local, t.global_batch)
                batch = distributed.global_batch(local, mesh)
                if compiled is None:  # compile once, ahead of time: timed, and the FLOPs fallback
                    batch_sh = jax.tree.map(lambda x: x.sharding, batch)
                    t0 = time.perf_counter()
                    with _sharding_context(mesh, rules):
                        compiled = jax.jit(wrapped, in_shardings=(shardings, batch_sh), out_shardings=(shardings, rep),
                                           donate_argnums=0).lower(state, batch).compile()
                    compile_s = time.perf_counter() - t0
                    flops, flops_src = flops_per_step, "model"
                    if flops is None:
                        flops, flops_src = _xla_flops(compiled, mesh.size), "xla"
                    writer.write(s, {"compile_time_s": compile_s})
                    window_t0 = time.perf_counter()
                state, m = compiled(state, batch)
                done = s + 1
                pending.append((done, m))
                ckpt_due = done == end or (ck.every and done % ck.every == 0)
                hook_due = any(done % h.every == 0 for h in hooks)
                log_due = done % t.log_every == 0 or ckpt_due or hook_due
                multi = jax.process_count() > 1
                stop = preempt.flag and not multi
                if log_due or stop:
                    rows = _flush(pending, schedule, ckpt)  # waits for the window's steps to finish
                    elapsed = time.perf_counter() - window_t0  # after the wait: steps run asynchronously
                    pending = []
                    history.extend(rows)
                    stats = _window_stats(rows, elapsed, t.global_batch, tokens_per_example, flops, flops_src,
                                          mesh.size, peak)
                    writer.write(done, stats)
                    if bar is not None:
                        bar.update(len(rows))
                        bar.set_postfix(loss=f"{stats['loss']:.4g}", lr=f"{stats['lr']:.3g}")
                if multi and log_due:
                    stop = distributed.any_process(preempt.flag)
                late = log_due and done < end and 0 < time_limit < time.perf_counter() - call_t0
                if multi and log_due and time_limit > 0:  # every process stops at the same step
                    late = distributed.any_process(late)
                if saving and (ckpt_due or stop or late):
                    ckpt.save(state, data.get_state(), config, wait=bool(stop or late))
                for h in hooks:
                    if done % h.every == 0:
                        out = h.fn(done, state, writer)
                        if out:
                            writer.write(done, dict(out))
                if stop:
                    stopped = "preempted"
                    log.warning("SIGTERM: saved step %d in %s, stopping", done, workdir)
                    break
                if late:
                    stopped = "time_limit"
                    log.warning("train.time_limit_s=%g passed: stopping at step %d of %d (saved in %s)",
                                time_limit, done, t.total_steps, workdir)
                    break
                if log_due:
                    window_t0 = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
        writer.close()
    return TrainResult(state=state, history=history, stopped=stopped, start_step=start, workdir=workdir)


def _to_global(x, sharding: NamedSharding) -> jax.Array:
    """A global array with `sharding` from a value every process holds in full."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


@contextlib.contextmanager
def _sharding_context(mesh: Mesh, rules):
    """While tracing: the mesh, and the logical rules for nn.with_logical_constraint on activations."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.logical_rules(rules)):
        yield


def _flush(pending, schedule, ckpt) -> list[dict]:
    """Host copies of the pending steps' metrics; raises on the first non-finite loss."""
    fetched = jax.device_get([m for _, m in pending])
    rows = []
    for (step, _), m in zip(pending, fetched):
        row = {"step": step, **{k: float(v) for k, v in m.items()}}
        row.setdefault("lr", float(schedule(step - 1)))
        if not math.isfinite(row["loss"]):
            if ckpt is not None:
                ckpt.wait()
            raise NonFiniteLossError(step, row["loss"], None if ckpt is None else ckpt.latest_step())
        rows.append(row)
    return rows


def _window_stats(rows, elapsed, global_batch, tokens_per_example, flops, flops_src, n_devices, peak) -> dict:
    """Means of the step metrics over a logging window (lr: the last), plus throughput and MFU."""
    stats = {k: float(np.mean([r[k] for r in rows])) for k in rows[-1] if k != "step"}
    stats["lr"] = rows[-1]["lr"]
    stats.update(metrics_lib.throughput(elapsed / len(rows), global_batch, tokens_per_example, flops,
                                        n_devices, peak))
    if "mfu" in stats:
        stats["mfu_flops_from_model"] = float(flops_src == "model")
    return stats


def _xla_flops(compiled, num_devices: int) -> float | None:
    """FLOPs of the compiled step per XLA's cost analysis (per device) times the devices (None if absent)."""
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0))
    except Exception:  # cost analysis is best-effort and backend-dependent
        return None
    return flops * num_devices if flops > 0 else None
