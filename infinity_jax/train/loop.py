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
  - checks the config first (validate_config: a UsageError naming the bad key and value);
  - resumes from the latest complete checkpoint in `workdir/checkpoints` (state, rng, data
    iterator); saves every `checkpoint.every` steps, at the end, and on SIGTERM (then returns
    with result.stopped == 'preempted'), async, keeping the last `checkpoint.keep`. A resume
    keeps the run's lr schedule: settings it depends on (train.total_steps, optim.warmup_steps, ...)
    that differ from the checkpoint's config are refused unless train.reschedule=True (then the
    schedule is recomputed for the new settings, e.g. to train a finished run further: the lr
    jumps back up from where it ended); param shapes that differ from the checkpoint's are
    refused too, naming the first one (preflight() runs these checks before a command's slow set-up);
  - with `train.time_limit_s` > 0, stops (saved) at the first logging step past that many seconds
    of the call and returns with result.stopped == 'time_limit': a finished run (FINISHED) whose
    lr schedule was cut short, as a time-budgeted run (the demo) wants;
  - every `train.log_every` steps writes loss, the step's other metrics, grad norm, lr, step
    time, images/s, tokens/s and MFU (means over the window; lr: its last step's), the first row
    also the compile time, and whatever hooks return at that step, as one row per logged step to
    workdir/metrics.jsonl and workdir/tb (process 0 only); a resumed run first drops the rows
    after its checkpoint's step (steps it redoes), a fresh one empties the file;
  - a NaN/Inf loss raises NonFiniteLossError naming the step; nothing is saved after it.
Step keys are fold_in(base key, step), so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from infinity_jax import config_util, parallel
from infinity_jax.checkpoint import Checkpointer
from infinity_jax.errors import UsageError
from infinity_jax.train import distributed, optim
from infinity_jax.train import metrics as metrics_lib
from infinity_jax.train.state import TrainState, make_step, state_shardings, step_key

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; `step` is the update that produced it (1-based)."""

    def __init__(self, step: int, value: float, last_checkpoint: int | None):
        super().__init__(
            f"loss is {value} at step {step}; stopped without saving (last good checkpoint: step {last_checkpoint})"
        )
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
    history: list[dict]  # one dict per step run in this call: {'step': s, 'loss': ..., ...}
    stopped: str  # 'done' | 'time_limit' | 'until_step' | 'preempted'
    start_step: int  # the step this call started from (> 0 after a resume)
    workdir: str
    # the mean loss of the run's last logging window (its metrics.jsonl row at the last step); a call that had
    # no step left to run reads it from metrics.jsonl (None where that has none, e.g. on processes > 0)
    train_loss: float | None = None

    def summary(self, config) -> dict:
        """What a trainer's final.json starts with: step, start_step, stopped, train_loss and the config."""
        return {
            "step": int(jax.device_get(self.state.step)),
            "start_step": self.start_step,
            "stopped": self.stopped,
            "train_loss": self.train_loss,
            "config": json.loads(config_util.to_json(config)),
        }


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
            raise ValueError(
                f"data gave a local batch with leading axis {np.shape(x)[0]}; expected "
                f"train.global_batch / process_count = {global_batch} / {jax.process_count()} = {want}"
            )


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def validate_config(config, mesh: Mesh | None = None) -> None:
    """Checks the sections run_training reads (train, optim, parallel, checkpoint) before anything is built or
    compiled: a UsageError names the first bad key, its value and what was expected. mesh: the mesh the run
    will use (default: the one config.parallel describes, which must fit the devices); the global batch must
    split over its data x fsdp devices. Counts processes and devices: call it after jax.distributed starts."""

    def need(ok, key, value, expected):
        if not ok:
            raise UsageError(f"{key}={value!r}: expected {expected}")

    def get(section, key, default=KeyError):
        if section not in config:
            raise UsageError(f"the config has no '{section}' section: expected those of configs/train_defaults.py")
        if key not in config[section]:
            if default is KeyError:
                raise UsageError(f"the config has no {section}.{key}: expected the keys of configs/train_defaults.py")
            return default
        return config[section][key]

    def integer(section, key, low, default=KeyError):
        value = get(section, key, default)
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
        need(ok, f"{section}.{key}", value, f"an integer >= {low}")
        return value

    def number(section, key, low, high=math.inf, high_open=False, default=KeyError):
        value = get(section, key, default)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and low <= value and (value < high if high_open else value <= high)
        bound = "" if high == math.inf else f" and {'<' if high_open else '<='} {high}"
        need(ok, f"{section}.{key}", value, f"a number >= {low}{bound}")
        return value

    integer("train", "total_steps", 1)
    batch = integer("train", "global_batch", 1)
    accum = integer("train", "grad_accum", 1)
    if batch % (jax.process_count() * accum):
        raise UsageError(
            f"train.global_batch={batch}: expected a multiple of process_count ({jax.process_count()}) "
            f"x train.grad_accum ({accum})"
        )
    dtype = get("train", "compute_dtype")
    need(dtype in COMPUTE_DTYPES, "train.compute_dtype", dtype, f"one of {COMPUTE_DTYPES}")
    integer("train", "log_every", 1)
    integer("train", "hook_every", 1)
    number("train", "time_limit_s", 0.0, default=0.0)
    reschedule = get("train", "reschedule", False)
    need(isinstance(reschedule, bool), "train.reschedule", reschedule, "True or False")

    number("optim", "base_lr", 0.0)
    number("optim", "b1", 0.0, 1.0, high_open=True)
    number("optim", "b2", 0.0, 1.0, high_open=True)
    number("optim", "eps", 0.0)
    number("optim", "weight_decay", 0.0)
    number("optim", "grad_clip", -math.inf)
    kind = get("optim", "schedule")
    need(kind in optim.SCHEDULES, "optim.schedule", kind, f"one of {optim.SCHEDULES}")
    integer("optim", "warmup_steps", -1)
    number("optim", "warmup_init", 0.0)
    number("optim", "final_frac", 0.0)
    number("optim", "ema_decay", 0.0, 1.0, high_open=True, default=0.0)

    rules = get("parallel", "rules")
    if isinstance(rules, str):  # a preset name; library callers may pass a rules table instead
        need(rules in parallel.RULES, "parallel.rules", rules, f"one of {sorted(parallel.RULES)}")
    if mesh is None:
        fsdp, tensor = integer("parallel", "fsdp", 1), integer("parallel", "tensor", 1)
        data = integer("parallel", "data", -1)
        need(data != 0, "parallel.data", data, "-1 (the devices left) or a positive mesh size")
        n = jax.device_count()
        if data == -1:
            if n % (fsdp * tensor):
                raise UsageError(
                    f"parallel.fsdp={fsdp} x parallel.tensor={tensor}: expected a divisor of the {n} devices"
                )
            data = n // (fsdp * tensor)
        elif data * fsdp * tensor != n:
            raise UsageError(
                f"parallel.data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor}: "
                f"expected the {n} devices (parallel.data=-1 takes what is left)"
            )
        shards = data * fsdp
    else:
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % shards:
        raise UsageError(
            f"train.global_batch={batch}: expected a multiple of the mesh's data x fsdp = {shards} "
            f"devices the batch is split over"
        )

    if get("checkpoint", "enabled", True):
        integer("checkpoint", "every", 0)
        integer("checkpoint", "keep", 1)


def preflight(config, workdir: str, init_params: Callable[[jax.Array], Any], mesh: Mesh | None = None) -> int | None:
    """run_training's checks of the config and, when workdir holds a checkpoint, of resuming it (same lr schedule
    unless train.reschedule, same param shapes), each a UsageError, without building more than shapes: what a
    command calls before its slow set-up (VAE, text encoder, data). Returns the step a run would resume from."""
    validate_config(config, mesh)
    if not config.checkpoint.get("enabled", True):
        return None
    from etils import epath

    directory = os.path.join(workdir, "checkpoints")
    if not epath.Path(directory).exists():
        return None
    with Checkpointer(directory, read_only=True) as ckpt:
        step = ckpt.latest_step()
        if step is not None:
            _check_schedule(config, ckpt, step, workdir)
            tx, _ = optim.make_optimizer(config.optim, config.train.total_steps, config.train.global_batch)
            init_state, _ = _state_init(config, init_params, tx)
            ckpt.check_shapes(jax.eval_shape(init_state), step)
    return step


def _state_init(config, init_params, tx):
    """(init_state() -> TrainState, init_key): the run's initial state from its seed."""
    init_key, state_key = jax.random.split(jax.random.key(config.seed))
    ema_decay = float(config.optim.get("ema_decay", 0.0))
    return (lambda: TrainState.create(init_params(init_key), tx, state_key, ema_decay)), init_key


def _check_schedule(config, ckpt: Checkpointer, step: int, workdir: str) -> None:
    """Refuses (UsageError) to resume a checkpoint whose config gave another lr schedule, unless train.reschedule."""
    try:
        before = optim.schedule_settings(ckpt.restore_config(step))
    except (AttributeError, KeyError, TypeError, ValueError):  # no training config saved with it: nothing to hold to
        return
    now = optim.schedule_settings(config)
    changed = [k for k in now if now[k] != before[k]]
    if not changed:
        return
    if not config.train.get("reschedule", False):
        k = changed[0]
        raise UsageError(
            f"{k}={now[k]!r}, but the run in {workdir} (checkpoint at step {step}) has {before[k]!r}: its "
            f"lr schedule would change mid-run; to continue it with the schedule recomputed for the new "
            f"{', '.join(changed)}, add --config.train.reschedule=True (or start a new --workdir)"
        )
    log.warning(
        "train.reschedule: resuming step %d with the lr schedule recomputed for %s",
        step,
        ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed),
    )


def run_training(
    config,
    workdir: str,
    *,
    init_params: Callable[[jax.Array], Any],
    data,
    loss_fn: Callable | None = None,
    step_fn: Callable | None = None,
    hooks: Sequence[Hook] = (),
    mesh: Mesh | None = None,
    flops_per_step: float | None = None,
    tokens_per_example: float | None = None,
    until_step: int | None = None,
    frozen: Any = None,
) -> TrainResult:
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
    validate_config(config, mesh)
    t, ck = config.train, config.checkpoint
    call_t0, time_limit = time.perf_counter(), float(t.get("time_limit_s", 0.0))
    mesh = build_mesh(config) if mesh is None else mesh
    rules = config.parallel.rules
    tx, schedule = optim.make_optimizer(config.optim, t.total_steps, t.global_batch)
    if optim.warmup_steps(config.optim, t.total_steps) < config.optim.warmup_steps:
        log.warning(
            "optim.warmup_steps=%d does not fit in train.total_steps=%d: warm-up shortened to %d step(s)",
            config.optim.warmup_steps,
            t.total_steps,
            optim.warmup_steps(config.optim, t.total_steps),
        )
    if step_fn is None:
        dtype = jnp.dtype(t.compute_dtype)
        step_fn = make_step(loss_fn, schedule, t.grad_accum, None if dtype == jnp.float32 else dtype, mesh)

    saving = ck.get("enabled", True)
    ckpt = (
        Checkpointer(os.path.join(workdir, "checkpoints"), keep=ck.keep, async_save=ck.async_save) if saving else None
    )
    state, shardings = _initial_state(config, workdir, init_params, tx, mesh, ckpt, data, frozen)

    start = int(jax.device_get(state.step))
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=t.get("tensorboard", True), start_step=start)
    train_loss = writer.last("loss")  # until this call logs a window of its own
    history: list[dict] = []
    hooks = [dataclasses.replace(h, every=h.every or t.hook_every) for h in hooks]
    peak = metrics_lib.peak_flops_per_device()

    def wrapped(st, batch):
        return step_fn(st, batch, step_key(st))

    bar = None
    if writer.enabled and t.get("progress_bar", True):
        from tqdm import tqdm

        bar = tqdm(total=t.total_steps, initial=start, desc="train", dynamic_ncols=True)

    compiled, pending, compile_s = None, [], None
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
                    t0 = time.perf_counter()
                    compiled = _compile_step(wrapped, state, batch, shardings, mesh, rules)
                    compile_s = time.perf_counter() - t0
                    flops, flops_src = flops_per_step, "model"
                    if flops is None:
                        flops, flops_src = _xla_flops(compiled, mesh.size), "xla"
                    window_t0 = time.perf_counter()
                state, m = compiled(state, batch)
                done = s + 1
                pending.append((done, m))
                ckpt_due = done == end or (ck.every and done % ck.every == 0)
                hook_due = any(done % h.every == 0 for h in hooks)
                log_due = done % t.log_every == 0 or ckpt_due or hook_due
                multi = jax.process_count() > 1
                stop = preempt.flag and not multi
                stats = None
                if log_due or stop:
                    rows = _flush(pending, schedule, ckpt)  # waits for the window's steps to finish
                    elapsed = time.perf_counter() - window_t0  # after the wait: steps run asynchronously
                    pending = []
                    history.extend(rows)
                    stats = _window_stats(
                        rows, elapsed, t.global_batch, tokens_per_example, flops, flops_src, mesh.size, peak
                    )
                    if compile_s is not None:  # the first row of the call: one row per step, no separate one
                        stats["compile_time_s"], compile_s = compile_s, None
                    train_loss = stats["loss"]
                    if bar is not None:
                        bar.update(len(rows))
                        bar.set_postfix(loss=f"{stats['loss']:.4g}", lr=f"{stats['lr']:.3g}")
                for h in hooks:  # a hook's step is a logging step: its values join that step's row
                    if done % h.every == 0:
                        out = h.fn(done, state, writer)
                        if out:
                            stats = dict(stats or {}, **out)
                if stats is not None:  # before the save: a step whose checkpoint exists has its row
                    writer.write(done, stats)
                if multi and log_due:
                    stop = distributed.any_process(preempt.flag)
                late = log_due and done < end and 0 < time_limit < time.perf_counter() - call_t0
                if multi and log_due and time_limit > 0:  # every process stops at the same step
                    late = distributed.any_process(late)
                if saving and (ckpt_due or stop or late):
                    ckpt.save(state, data.get_state(), config, wait=bool(stop or late))
                if stop:
                    stopped = "preempted"
                    log.warning("SIGTERM: saved step %d in %s, stopping", done, workdir)
                    break
                if late:
                    stopped = "time_limit"
                    log.warning(
                        "train.time_limit_s=%g passed: stopping at step %d of %d (saved in %s)",
                        time_limit,
                        done,
                        t.total_steps,
                        workdir,
                    )
                    break
                if log_due:
                    window_t0 = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
        writer.close()
    return TrainResult(
        state=state, history=history, stopped=stopped, start_step=start, workdir=workdir, train_loss=train_loss
    )


def _initial_state(config, workdir: str, init_params, tx, mesh: Mesh, ckpt, data, frozen):
    """(state, its shardings): shapes and shardings first, then the latest checkpoint restored into them (and
    the data iterator's state) or a sharded init; `frozen` placed beside, on the mesh by its logical names."""
    rules, total = config.parallel.rules, config.train.total_steps
    init_state, init_key = _state_init(config, init_params, tx)
    logical = nn.get_partition_spec(jax.eval_shape(init_params, init_key))
    abstract = jax.eval_shape(init_state)
    shardings = state_shardings(abstract, logical, mesh, rules)
    resumed_from = ckpt.latest_step() if ckpt is not None else None
    if resumed_from is not None:
        _check_schedule(config, ckpt, resumed_from, workdir)
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        state, data_state = ckpt.restore(target, resumed_from)  # a param of another shape: a UsageError naming it
        data.set_state(data_state)
        log.info("resumed from %s/checkpoints step %d (of train.total_steps=%d)", workdir, resumed_from, total)
    else:
        with _sharding_context(mesh, rules):
            state = jax.jit(init_state, out_shardings=shardings)()
        log.info("starting at step 0 of train.total_steps=%d in %s", total, workdir)
    if frozen is not None:
        frozen_sh = parallel.logical_to_mesh_sharding(nn.get_partition_spec(frozen), mesh, rules)
        state = state.replace(frozen=jax.tree.map(_to_global, nn.meta.unbox(frozen), frozen_sh))
        shardings = shardings.replace(frozen=frozen_sh)
    return state, shardings


def _compile_step(step, state, batch, shardings, mesh: Mesh, rules):
    """The step compiled ahead of time for these shardings (state donated; metrics replicated)."""
    batch_sh = jax.tree.map(lambda x: x.sharding, batch)
    with _sharding_context(mesh, rules):
        jitted = jax.jit(
            step,
            in_shardings=(shardings, batch_sh),
            out_shardings=(shardings, NamedSharding(mesh, P())),
            donate_argnums=0,
        )
        return jitted.lower(state, batch).compile()


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
    stats.update(metrics_lib.throughput(elapsed / len(rows), global_batch, tokens_per_example, flops, n_devices, peak))
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
