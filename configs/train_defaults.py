"""Training defaults (model-independent): optimizer, schedule, sharding, checkpoints, logging.

usage: get_config() -> ConfigDict with sections `train`, `optim`, `parallel`, `checkpoint`, plus `seed`.
An experiment config builds on it (`c = train_defaults.get_config(); c.model = ...`) and
`infinity_jax.train.loop.run_training` reads exactly these keys (optim.no_decay_keys: train.optim's
NO_DECAY_KEYS, which infinity_jax.run_config.load fills in when a command loads the config).
get_config('tiny') is a small, CPU-friendly variant (tests and smoke runs).

Official values (FoundationVision/Infinity arg_util defaults and its train script) are noted;
where the two differ the code default is taken unless said otherwise.
"""

from __future__ import annotations

import ml_collections

from infinity_jax.config_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = "tiny" in parse_arg(arg, {"tiny"}, "train_defaults")
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.train = t = ml_collections.ConfigDict()
    t.total_steps = 100_000
    t.global_batch = 256  # examples per optimizer update (all processes, all micro-batches)
    t.grad_accum = 1  # micro-batches per update (scan inside the step; official `ac`)
    t.compute_dtype = "bfloat16"  # params and optimizer state stay fp32 (official fp16=2: bf16 autocast)
    t.log_every = 50  # official log_freq
    t.hook_every = 1000  # periodic hooks (e.g. sample grids) that do not set their own period
    t.time_limit_s = 0.0  # > 0: stop (saved) at the first log step after this many seconds of this
    # call; the run counts as finished, its lr schedule cut where it stopped
    t.reschedule = False  # True: resume a checkpoint whose lr schedule settings differ from these (e.g. a
    # larger total_steps, to train a finished run further): the schedule is
    # recomputed for the new settings, so the lr jumps at the resume step; False
    # refuses such a resume (the schedule would otherwise change silently)
    t.progress_bar = True
    t.tensorboard = True

    c.optim = o = ml_collections.ConfigDict()
    o.base_lr = 6e-4  # official tblr (code default; the train script uses 6e-3); peak = base_lr * global_batch / 256
    o.b1, o.b2 = 0.9, 0.97  # train script --ada=0.9_0.97
    o.eps = 1e-8
    o.weight_decay = 0.005  # twd; constant (official twde defaults to twd)
    o.grad_clip = 5.0  # train script --tclip=5 (code default 2); <= 0 disables
    o.schedule = "lin0"  # lin0 | lin00 | cos | const
    o.warmup_steps = -1  # -1: 1% of total_steps (official wp default = ep/100); cut to total_steps - 1
    # in a run not longer than it (e.g. a 2-step smoke run of a tiny config)
    o.warmup_init = 0.005  # official wp0: lr at step 0, as a fraction of the peak
    o.final_frac = 0.3  # official wpe (code default; the train script uses 1)
    o.ema_decay = 0.0  # official tema (0 = no EMA); e.g. 0.9999

    c.parallel = p = ml_collections.ConfigDict()
    p.rules = "fsdp"  # dp | fsdp | fsdp_tp (infinity_jax.parallel.RULES)
    p.data = -1  # mesh sizes; -1: whatever is left
    p.fsdp = 1
    p.tensor = 1

    c.checkpoint = k = ml_collections.ConfigDict()
    k.enabled = True  # False: never save or resume (throwaway runs)
    k.every = 1000  # save every N steps (0: only at the end and on preemption)
    k.keep = 3  # keep the last N
    k.async_save = True

    if tiny:
        t.total_steps, t.global_batch, t.compute_dtype, t.log_every = 10, 16, "float32", 1
        t.progress_bar = False
        o.warmup_steps = 2
        p.rules, p.data = "dp", -1
        k.every, k.keep = 5, 2
    return c
