"""Checkpoints: orbax CheckpointManager over the train state, the data-iterator state and the config.

Layout under `directory` (one folder per step, written by orbax):

  <step>/state/    params, opt_state, step, rng, ema_params (sharded arrays, restored with the
                   shardings of the target, so a checkpoint restores onto any mesh)
  <step>/data/     process_<i>-of-<n>.json: each process's data-iterator state (get_state())
  <step>/config/   the run's config as JSON: `load_config(directory)` needs nothing else

Saves are asynchronous (arrays are copied to host, then written in the background) and atomic:
orbax writes into a temporary folder and renames it when every item is complete, so a job
killed mid-save leaves at most a temporary folder that `latest_step()` never picks (and that
is cleaned up when the next manager opens the directory). Keeps the last `keep` steps.
restore() first compares the saved arrays' shapes with the target's (check_shapes): a run resumed
with another model config is a one-line UsageError naming the first differing param and both shapes.
`Checkpointer(dir, read_only=True).restore_params()` reads only the (EMA) params and the config,
the way sampling and export use a run; a relative `directory` is made absolute (orbax needs that).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from infinity_jax.errors import UsageError


class _QuietReadOnly(logging.Filter):
    """Drops orbax's warning that a read-only manager's directory is read only (logged at every open, that being
    the point of read_only=True): it would be a second line beside a command's one-line error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_QuietReadOnly())


# ------------------------------------------------------------------ data-iterator state, per process
def _encode_data_state(state) -> str:
    if isinstance(state, (bytes, bytearray)):  # e.g. grain DataLoaderIterator
        return json.dumps({"bytes": base64.b64encode(bytes(state)).decode("ascii")})
    return json.dumps({"json": state})


def _decode_data_state(text: str):
    d = json.loads(text)
    return base64.b64decode(d["bytes"]) if "bytes" in d else d["json"]


class DataStateHandler(ocp.CheckpointHandler):
    """Every process writes its own iterator state (it differs per host: each reads its own shard)."""

    def save(self, directory: epath.Path, args: "DataStateSave"):
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (directory / name).write_text(_encode_data_state(args.state))

    def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None):
        path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir())
            raise ValueError(
                f"no data-iterator state {path.name} in {directory}: found {found} "
                f"(was the checkpoint written with a different number of processes?)"
            )
        return _decode_data_state(path.read_text())

    def metadata(self, directory: epath.Path):
        return None

    def structure(self, directory: epath.Path):
        return None

    def finalize(self, directory: epath.Path):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


# ------------------------------------------------------------------ helpers
def config_to_dict(config) -> dict:
    """A JSON-able dict of a ConfigDict (or dict)."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


def _state_tree(state) -> dict:
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}
    if state.ema_params is not None:
        tree["ema_params"] = state.ema_params
    return tree


def _shapes(tree) -> dict[str, tuple]:
    """'params/blocks_0/w' -> shape, for arrays and orbax metadata alike (namedtuple fields by name)."""

    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return {"/".join(map(name, path)): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _abstract(tree):
    """ShapeDtypeStructs carrying each leaf's sharding (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _restore_args(target, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Restore `target`'s leaves (ShapeDtypeStructs) with their shardings (numpy where they have none);
    partial: the target may name only some of the saved keys."""
    return ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=partial
    )


# ------------------------------------------------------------------ the manager
class Checkpointer:
    """Save/restore TrainState + data state + config in `directory` (see module docstring)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True, read_only: bool = False):
        # orbax's array writer refuses relative paths (at the first save, deep in tensorstore);
        # a URL (gs://...) is kept as it is
        path = os.fspath(directory)
        self.directory = epath.Path(path if "://" in path else os.path.abspath(path))
        if read_only:  # never creates, cleans up or deletes anything (sampling, export, a resume's preflight)
            # (what read_only implies, said outright: orbax warns about each default it has to override)
            options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save
            )
        # PyTree (not Standard) handler: the same files, and it can restore a part of the state
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data", "config"),
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(),
                "data": DataStateHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )
        # orbax deletes stale temporary folders (a killed save) in the background; finish that now so
        # a second manager on the same directory never races it (private hook, hence the guard)
        await_cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None and not read_only:
            await_cleanup()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state, data_state, config, wait: bool = False) -> None:
        """Saves at step int(state.step). data_state: this process's iterator get_state()."""
        step = int(jax.device_get(state.step))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(_state_tree(state)),
                data=DataStateSave(data_state),
                config=ocp.args.JsonSave(config_to_dict(config)),
            ),
            force=True,
        )
        if wait:
            self.wait()

    def restore(self, target_state, step: int | None = None):
        """(state, data_state) at `step` (default: latest). target_state: a TrainState (real or
        with jax.ShapeDtypeStruct leaves) whose leaves carry the shardings to restore onto."""
        step = self._step(step)
        target = _abstract(_state_tree(target_state))
        self.check_shapes(target_state, step)
        out = self.manager.restore(step, args=ocp.args.Composite(state=_restore_args(target), data=DataStateRestore()))
        tree = out["state"]
        state = target_state.replace(
            step=tree["step"],
            params=tree["params"],
            opt_state=tree["opt_state"],
            rng=tree["rng"],
            ema_params=tree.get("ema_params"),
        )
        return state, out["data"]

    def restore_params(self, step: int | None = None, prefer_ema: bool = True) -> tuple[Any, dict, int, str]:
        """(params as numpy, config dict, step, 'ema_params' or 'params') at `step` (default: latest):
        only that part of the state is read (no optimizer state, no data state)."""
        step = self._step(step)
        tree = self.manager.item_metadata(step)["state"]
        key = "ema_params" if prefer_ema and "ema_params" in tree else "params"
        if key not in tree:
            raise ValueError(f"checkpoint {self.directory}/{step}/state holds {sorted(tree)}: expected 'params'")
        # no sharding: every leaf comes back as a host numpy array
        target = {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree[key])}
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=_restore_args(target, partial=True), config=ocp.args.JsonRestore())
        )
        return out["state"][key], dict(out["config"] or {}), step, key

    def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
        """The config saved at `step` (default: latest)."""
        step = self._step(step)
        cfg = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        return ml_collections.ConfigDict(cfg)

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"no complete checkpoint in {self.directory}: expected <step>/state and <step>/config folders"
            )
        return step

    def check_shapes(self, target_state, step: int | None = None) -> None:
        """A one-line UsageError naming the first array whose presence or shape differs between the checkpoint
        at `step` (default: latest) and target_state (a TrainState, real or abstract), params first: a run
        resumed with another model config. Reads only metadata."""
        step = self._step(step)
        saved = _shapes(self.manager.item_metadata(step)["state"])
        wanted = _shapes(_state_tree(target_state))
        where = f"checkpoint {self.directory}/{step}"
        hint = "resume with the run's own model settings (saved in the checkpoint's config) or start a new --workdir"
        order = {"params": 0, "ema_params": 1, "opt_state": 2}  # a changed model shows first in its params
        for key in sorted(set(saved) | set(wanted), key=lambda k: (order.get(k.split("/")[0], 3), k)):
            if key not in saved:
                raise UsageError(
                    f"{where} has no {key!r} (the config gives shape {wanted[key]}): the model or "
                    f"optimizer differs from the one that wrote it; {hint}"
                )
            if key not in wanted:
                raise UsageError(f"{where} has {key!r} {saved[key]} that the config's model/optimizer lacks; {hint}")
            if saved[key] != wanted[key]:
                raise UsageError(
                    f"{where}: {key!r} has shape {saved[key]} there, the config's model gives {wanted[key]}; {hint}"
                )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_config(directory: str | os.PathLike, step: int | None = None) -> ml_collections.ConfigDict:
    """The config saved with the checkpoint at `step` (default: latest) in `directory`."""
    ck = Checkpointer(directory, read_only=True)
    try:
        return ck.restore_config(step)
    finally:
        ck.close()
