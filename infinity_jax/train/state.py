"""The train state pytree, its shardings, and a generic step built from a loss function.

A step is a pure function `step(state, batch, rng) -> (state, metrics)`; the loop jits it with
explicit in/out shardings. `make_step(loss_fn, ...)` builds one from
`loss_fn(params, batch, rng[, frozen]) -> (loss, metrics)`: micro-batch gradient accumulation (one optimizer
update per step), optional cast of the params to a compute dtype (fp32 params and optimizer
state, bf16 compute), global-norm clipping and AdamW (inside `state.tx`), EMA, and the
metrics `loss`, `grad_norm` (before clipping), `lr` plus whatever the loss returns.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from infinity_jax import parallel
from infinity_jax.train import optim

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]
StepFn = Callable[["TrainState", Any, jax.Array], tuple["TrainState", dict]]


@struct.dataclass
class TrainState:
    """step: int32 (); params: fp32 tree (unboxed); opt_state: tx state (sharded like params);
    rng: uint32 raw key data, the run's base key (step keys are fold_in(rng, step));
    ema_params: fp32 tree or None; frozen: arrays the loss reads but never trains (e.g. the
    VAE or text encoder), not checkpointed, or None; tx and ema_decay are static."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None
    frozen: Any = None
    tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, rng: jax.Array, ema_decay: float = 0.0) -> "TrainState":
        """params may be boxed (nn.LogicallyPartitioned); they are unboxed here. rng: a key or raw key data."""
        params = nn.meta.unbox(params)
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        ema = jax.tree.map(jnp.copy, params) if ema_decay > 0 else None
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=rng,
            ema_params=ema,
            tx=tx,
            ema_decay=float(ema_decay),
        )

    def apply_gradients(self, grads) -> "TrainState":
        """One optimizer update (clipping and weight decay live in tx), then EMA, step + 1."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        ema = None if self.ema_params is None else optim.ema_update(self.ema_params, params, self.ema_decay)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema)


def step_key(state: TrainState) -> jax.Array:
    """The step's PRNG key: a pure function of the base key and the step (so resume reproduces)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def state_shardings(abstract_state: TrainState, param_logical_specs, mesh: Mesh, rules) -> TrainState:
    """NamedShardings for every leaf of a state without frozen arrays (the loop adds those): params
    and EMA from their logical specs, optimizer moments like the params they belong to
    (optax.tree_map_params), the rest replicated."""
    rep = NamedSharding(mesh, P())
    p_sh = parallel.logical_to_mesh_sharding(param_logical_specs, mesh, rules)
    opt_sh = optax.tree_map_params(
        abstract_state.tx,
        lambda _, s: s,
        abstract_state.opt_state,
        p_sh,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: x is None,
    )
    return abstract_state.replace(
        step=rep, params=p_sh, opt_state=opt_sh, rng=rep, ema_params=None if abstract_state.ema_params is None else p_sh
    )


def make_step(
    loss_fn: LossFn,
    schedule: optax.Schedule | None = None,
    grad_accum: int = 1,
    compute_dtype: Any = None,
    mesh: Mesh | None = None,
) -> StepFn:
    """A pure `step(state, batch, rng) -> (state, metrics)` from `loss_fn(params, batch, rng)`
    (or `loss_fn(params, batch, rng, frozen)` when the state carries frozen arrays).

    grad_accum: micro-batches per update (lax.scan inside the step; one update per step).
    compute_dtype: if set (e.g. jnp.bfloat16), floating params are cast to it before loss_fn;
      gradients still come back fp32 for the fp32 master params.
    schedule: if given, metrics['lr'] is the learning rate used by this update.
    mesh: if given, each micro-batch is constrained to the batch sharding (data x fsdp).
    """

    def cast(params):
        if compute_dtype is None:
            return params
        return jax.tree.map(lambda p: p.astype(compute_dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)

    def cast_loss(params, batch, rng, frozen):
        extra = () if frozen is None else (frozen,)
        loss, metrics = loss_fn(cast(params), batch, rng, *extra)
        return loss.astype(jnp.float32), jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)

    def constrain(mb):
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh, x.ndim)), mb)

    def step(state: TrainState, batch, rng):
        loss, metrics, grads = optim.accumulate_gradients(
            functools.partial(cast_loss, frozen=state.frozen),
            state.params,
            batch,
            rng,
            grad_accum,
            constrain if mesh is not None else None,
        )
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return state.apply_gradients(grads), metrics

    return step
