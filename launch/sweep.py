"""Scaling-law sweeps: model size x tokenizer bits x compute budget -> runs -> power-law fits.

usage: python launch/sweep.py --sweep configs/sweeps/NAME.py[:ARG] --root runs/sweep
           [--launch local|print|none] [--jobs N] [--fit-only]
           [--launcher local|local.sh|tpu_pod|slurm|multinode] [--launcher-args "..."]

A sweep file defines get_sweep(arg=None) -> dict (see configs/sweeps/shapes_tiny.py):
  config      the training config file every run uses, e.g. 'configs/shapes.py' (repo-relative)
  arg         get_config items every run gets ('' or e.g. 'tiny')
  overrides   'key=value' config overrides every run gets
  models      {label: items} model sizes; items are get_config items ('layers=2,width=64') or
              {'arg': items, 'overrides': (...)}; model items come first in the argument, so a
              zoo name works: {'layer12': 'layer12'}
  vocabs      {label: items} tokenizer vocabularies, e.g. {'d16': 'bits=16'} (same forms)
  budgets     training compute per run: FLOPs (budget_unit 'flops', the default; steps =
              round(budget / FLOPs per step), FLOPs per step from the trainer's own formula) or
              optimizer steps (budget_unit 'steps')
  min_steps   floor on steps (the lr schedule needs steps > warm-up); warmup_frac: if set, each
              run gets optim.warmup_steps = max(1, round(frac * steps))
  launcher, launcher_args   defaults for --launch print
Each run is `infinity-jax train --config CONFIG:ITEMS --workdir ROOT/VOCAB/MODEL/BUDGET
--config.train.total_steps=S [--config.K=V ...]` (CONFIG made absolute for a local ROOT, kept
repo-relative for a remote one such as gs://..., where pods run from their copy of the repo);
ROOT/.../run.json records it. A run is finished
when its final.json exists, so rerunning the sweep skips finished runs and reruns unfinished ones
with the same command, which resumes them from their checkpoints; a workdir recorded with a
different command is an error (delete it or pick another root).

After launching (or with --fit-only) the driver collects final.json (val_loss, flops_total,
params) and writes, under ROOT:
  results.csv        one row per run (unfinished runs have an empty loss)
  fit.json           per vocabulary: L(C) = a * C^-b + c on the compute frontier (the runs no
                     cheaper run beats); per vocabulary and budget: L(N) = a * N^-b + c over model
                     sizes and the best size
  summary.md         the tables; scaling.png (loss vs compute) and loss_vs_params.png (log-log)
--launch print prints only the commands of unfinished runs for a launcher (e.g. launch/tpu_pod.sh)
instead of running them (pipe them to a shell or a job queue); collect later with --fit-only,
from a local copy of a remote root (e.g. gsutil -m rsync -r gs://BUCKET/ladder runs/ladder).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import functools
import importlib.util
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Runner = Callable[[Sequence[str], str], int]  # (command, workdir) -> exit status


# ---------------------------------------------------------------- the sweep definition
@dataclasses.dataclass(frozen=True)
class Axis:
    """One value of a grid axis: get_config items and config overrides."""

    label: str
    arg: str = ""
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    config: str
    arg: str
    overrides: tuple[str, ...]
    models: tuple[Axis, ...]
    vocabs: tuple[Axis, ...]
    budgets: tuple[float, ...]
    budget_unit: str = "flops"
    steps_key: str = "train.total_steps"
    min_steps: int = 1
    warmup_frac: float | None = None
    launcher: str = "local"
    launcher_args: str = ""


def _axis(label: str, value: Any, where: str) -> Axis:
    if isinstance(value, str):
        return Axis(str(label), value)
    if isinstance(value, Mapping) and set(value) <= {"arg", "overrides"}:
        return Axis(str(label), str(value.get("arg", "")), tuple(value.get("overrides", ())))
    raise ValueError(
        f"sweep {where}[{label!r}] = {value!r}: expected get_config items ('layers=2,width=64') "
        "or {'arg': items, 'overrides': ('key=value', ...)}"
    )


def load_sweep(spec: str) -> Sweep:
    """'configs/sweeps/x.py[:arg]' -> the Sweep its get_sweep(arg) defines, checked."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path) and os.path.isfile(os.path.join(REPO, path)):
        path = os.path.join(REPO, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep file {path!r} not found (from --sweep {spec!r})")
    mod_spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    d = dict(mod.get_sweep(arg or None))
    known = {f.name for f in dataclasses.fields(Sweep)}
    if set(d) - known:
        raise ValueError(f"sweep {path}: unknown keys {sorted(set(d) - known)}; expected some of {sorted(known)}")
    for key in ("models", "vocabs", "budgets"):
        if not d.get(key):
            raise ValueError(f"sweep {path}: {key!r} is empty; a grid needs at least one value per axis")
    d["models"] = tuple(_axis(k, v, "models") for k, v in dict(d["models"]).items())
    d["vocabs"] = tuple(_axis(k, v, "vocabs") for k, v in dict(d["vocabs"]).items())
    d["budgets"] = tuple(float(b) for b in d["budgets"])
    d["overrides"] = tuple(d.get("overrides", ()))
    d.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    d.setdefault("arg", "")
    s = Sweep(**d)
    if s.budget_unit not in ("flops", "steps"):
        raise ValueError(f"sweep {path}: budget_unit={s.budget_unit!r}: expected 'flops' or 'steps'")
    return s


# ---------------------------------------------------------------- expansion into runs
@dataclasses.dataclass(frozen=True)
class Run:
    vocab: str
    model: str
    budget: float
    budget_label: str
    config: str  # 'file.py:items'
    overrides: tuple[str, ...]  # key=value, without the --config. prefix
    workdir: str
    steps: int
    flops_per_step: float | None
    params: int | None

    @property
    def command(self) -> list[str]:
        """The training command (the contract of `infinity-jax train`)."""
        return ["infinity-jax", "train", "--config", self.config, "--workdir", self.workdir] + [
            f"--config.{o}" for o in self.overrides
        ]

    @property
    def finished(self) -> bool:
        return os.path.isfile(os.path.join(self.workdir, "final.json"))

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return "partial" if os.path.isdir(os.path.join(self.workdir, "checkpoints")) else "pending"


def budget_label(budget: float, unit: str) -> str:
    """A short folder name: 3e9 -> 'C3e9', 1.5e10 -> 'C1.5e10'; steps -> 'S300'."""
    if unit == "steps":
        return f"S{int(budget)}"
    mant, exp = f"{budget:.2e}".split("e")
    return f"C{mant.rstrip('0').rstrip('.')}e{int(exp)}"


@functools.lru_cache(maxsize=None)
def run_shape(config: str, overrides: tuple[str, ...]) -> tuple[int, float]:
    """(params, training FLOPs per optimizer step) of one run's config, as `infinity-jax train`
    computes them for final.json (shapes only: nothing is allocated; memoised per process)."""
    from infinity_jax import config_util
    from infinity_jax.model import transformer as T
    from infinity_jax.runs import schedule_from_config
    from infinity_jax.train import step as step_lib

    cfg = config_util.load_config(config, overrides)
    mcfg = T.InfinityConfig.from_dict(cfg.model)
    if mcfg.ffn_hidden <= 0:  # the official rounding (to 256) leaves no MLP below width 64
        raise ValueError(
            f"{config} {list(overrides)}: model width {mcfg.embed_dim} x mlp_ratio {mcfg.mlp_ratio} "
            "rounds to an FFN of 0 units (multiples of 256); use width >= 64"
        )
    n = T.count_params(mcfg)
    text_len = int(cfg.text.max_length) if "text" in cfg else int(mcfg.text_maxlen)
    per_example = step_lib.train_flops_per_example(mcfg, schedule_from_config(cfg), text_len=text_len)
    return n, per_example * int(cfg.train.global_batch)


def _join(*items: str) -> str:
    return ",".join(i.strip(",") for i in items if i and i.strip(","))


def expand(sweep: Sweep, root: str, shape_fn: Callable = run_shape) -> list[Run]:
    """Every grid point as a Run, ordered by budget, vocabulary, model (so the first `--jobs` runs
    at the smallest budget compile different models)."""
    remote = "://" in root
    root = root.rstrip("/") if remote else os.path.abspath(root)
    runs, shapes = [], {}
    for budget in sorted(sweep.budgets):
        for v in sweep.vocabs:
            for m in sweep.models:
                config = f"{sweep.config}:{_join(m.arg, v.arg, sweep.arg)}"
                if not remote:  # local runs work from any directory; pod commands stay repo-relative
                    config = _local_config(config)
                base = tuple(sweep.overrides) + m.overrides + v.overrides
                params = fps = None
                if sweep.budget_unit == "flops":
                    if (config, base) not in shapes:
                        shapes[config, base] = shape_fn(_local_config(config), base)
                    params, fps = shapes[config, base]
                    steps = max(sweep.min_steps, round(budget / fps))
                else:
                    steps = max(sweep.min_steps, int(budget))
                extra = [f"{sweep.steps_key}={steps}"]
                if sweep.warmup_frac is not None:
                    extra.append(f"optim.warmup_steps={max(1, round(sweep.warmup_frac * steps))}")
                label = budget_label(budget, sweep.budget_unit)
                workdir = (
                    "/".join((root, v.label, m.label, label)) if remote else os.path.join(root, v.label, m.label, label)
                )
                runs.append(
                    Run(v.label, m.label, budget, label, config, base + tuple(extra), workdir, steps, fps, params)
                )
    seen = {}
    for r in runs:
        if r.workdir in seen:
            raise ValueError(
                f"sweep runs {seen[r.workdir]} and {r} share the workdir {r.workdir}: labels and budgets must be unique"
            )
        seen[r.workdir] = r
    return runs


def _local_config(config: str) -> str:
    """A config file path (relative to the current directory or the repository) made absolute."""
    path, sep, items = config.partition(":")
    if os.path.isfile(path):
        path = os.path.abspath(path)
    elif not os.path.isabs(path) and os.path.isfile(os.path.join(REPO, path)):
        path = os.path.join(REPO, path)
    return path + sep + items


# ---------------------------------------------------------------- launching
def subprocess_runner(command: Sequence[str], workdir: str, env: Mapping[str, str] | None = None) -> int:
    """Runs the command (from the current directory: relative data paths mean what they say),
    appending its output to WORKDIR/train.log."""
    cmd = list(command)
    if cmd[0] == "infinity-jax" and shutil.which("infinity-jax") is None:
        cmd[:1] = [sys.executable, "-m", "infinity_jax"]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "train.log"), "ab") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}).returncode


def record(run: Run) -> None:
    """Writes WORKDIR/run.json; refuses a workdir that an earlier, different command started."""
    path = os.path.join(run.workdir, "run.json")
    want = {
        "command": run.command,
        "vocab": run.vocab,
        "model": run.model,
        "budget": run.budget,
        "steps": run.steps,
        "params": run.params,
        "flops_per_step": run.flops_per_step,
    }
    if os.path.isfile(path):
        with open(path) as f:
            have = json.load(f)
        if have.get("command") != want["command"]:
            raise RuntimeError(
                f"{run.workdir} was started by\n  {shlex.join(have.get('command', []))}\nnot\n  "
                f"{shlex.join(run.command)}\nresuming it would mix two configs: delete the folder "
                "or use another --root"
            )
        return
    os.makedirs(run.workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(want, f, indent=1)


def launch_local(runs: Sequence[Run], runner: Runner, jobs: int = 1, log=print) -> dict[str, int]:
    """Runs every unfinished run (finished ones are skipped; partial ones resume); returns
    {workdir: exit status} of the runs launched."""
    todo = [r for r in runs if not r.finished]
    log(
        f"sweep: {len(runs) - len(todo)} of {len(runs)} runs finished; launching {len(todo)}"
        + (f", {jobs} at a time" if jobs > 1 and todo else "")
    )
    for r in todo:
        record(r)

    def one(r: Run) -> int:
        log(f"  start {r.vocab}/{r.model}/{r.budget_label} ({r.status}, {r.steps} steps)")
        rc = runner(r.command, r.workdir)
        log(f"  {'done ' if rc == 0 else f'FAILED (exit {rc})'} {r.vocab}/{r.model}/{r.budget_label}")
        return rc

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        return dict(zip((r.workdir for r in todo), pool.map(one, todo)))


LAUNCHERS = ("local", "local.sh", "tpu_pod", "slurm", "multinode")


def launcher_command(run: Run, launcher: str = "local", launcher_args: str = "") -> str:
    """One run as a shell command line for a launcher in launch/ (or plain `infinity-jax train`)."""
    extra = shlex.split(launcher_args)
    cfg, wd, ov = run.config, run.workdir, [f"--config.{o}" for o in run.overrides]
    if launcher == "local":
        return shlex.join(extra + run.command)
    if launcher == "local.sh":
        return shlex.join(["launch/local.sh", cfg, wd, *ov])
    if launcher == "tpu_pod":
        return shlex.join(["launch/tpu_pod.sh", *extra, "--config", cfg, "--workdir", wd, "--", *ov])
    if launcher == "slurm":
        return shlex.join(["sbatch", *extra, "launch/gpu_slurm.sbatch", cfg, wd, *ov])
    if launcher == "multinode":
        return shlex.join([*extra, "launch/gpu_multinode.sh", cfg, wd, *ov])
    raise ValueError(f"launcher {launcher!r}: expected one of {LAUNCHERS}")


# ---------------------------------------------------------------- collecting and fitting
def collect(runs: Sequence[Run]) -> list[dict]:
    """One row per run; finished runs carry final.json's val_loss, flops_total, params, tokens_total."""
    rows = []
    for r in runs:
        row = {
            "vocab": r.vocab,
            "model": r.model,
            "budget": r.budget,
            "budget_label": r.budget_label,
            "steps": r.steps,
            "status": r.status,
            "params": r.params,
            "flops_total": None,
            "tokens_total": None,
            "val_loss": None,
            "train_loss": None,
            "workdir": r.workdir,
        }
        if r.finished:
            with open(os.path.join(r.workdir, "final.json")) as f:
                final = json.load(f)
            for k in ("params", "flops_total", "tokens_total", "val_loss", "train_loss", "step"):
                if final.get(k) is not None:
                    row[k] = final[k]
        rows.append(row)
    return rows


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least-squares fit of y = a * x^-b + c (a > 0, c >= 0), numpy only.

    For a fixed exponent the model is linear in (a, c), so b is searched (a log-spaced grid on
    [1e-3, 4], then golden-section refinement) and (a, c) solved exactly for each b (variable
    projection). x is divided by its geometric mean first, which keeps x^-b in range for FLOP
    counts of 1e20. Returns {a, b, c, rmse, n}; needs at least 3 points.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"power-law fit: need >= 3 (x, y) points of equal length, got {x.shape} and {y.shape}")
    if np.any(x <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("power-law fit: x must be > 0 and y finite")
    scale = float(np.exp(np.mean(np.log(x))))
    u = x / scale

    def solve(b: float) -> tuple[float, float, float]:
        f = u**-b
        (a, c), *_ = np.linalg.lstsq(np.stack([f, np.ones_like(f)], 1), y, rcond=None)
        if c < 0:  # clamp at the bound: fit a alone with c = 0
            c, a = 0.0, float(f @ y / (f @ f))
        a = max(a, 0.0)
        return float(np.sum((a * f + c - y) ** 2)), float(a), float(c)

    grid = np.geomspace(1e-3, 4.0, 400)
    sse = [solve(b)[0] for b in grid]
    i = int(np.argmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden section on the bracket around the best grid point
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if solve(m1)[0] < solve(m2)[0]:
            hi = m2
        else:
            lo = m1
    b = (lo + hi) / 2
    sse_b, a, c = solve(b)
    return {"a": a * scale**b, "b": float(b), "c": c, "rmse": math.sqrt(sse_b / len(x)), "n": int(len(x))}


def power_law(fit: Mapping[str, float], x) -> np.ndarray:
    return fit["a"] * np.asarray(x, np.float64) ** -fit["b"] + fit["c"]


def compute_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (compute, loss) points that no run with less (or equal) compute beats, sorted by compute."""
    out, best = [], math.inf
    for c, loss in sorted(points):
        if loss < best:
            out.append((c, loss))
            best = loss
    return out


def fit_sweep(rows: Sequence[dict], on: str = "frontier") -> dict:
    """Per vocabulary: L(C) fit on the compute frontier (or on 'all' finished runs); per vocabulary
    and budget: L(N) over model sizes and the best size. Fits with < 3 points are left out (noted)."""
    done = [r for r in rows if r["val_loss"] is not None and r["flops_total"]]
    out = {"loss_vs_compute": {}, "loss_vs_params": {}}
    for vocab in dict.fromkeys(r["vocab"] for r in rows):
        pts = [(float(r["flops_total"]), float(r["val_loss"])) for r in done if r["vocab"] == vocab]
        used = compute_frontier(pts) if on == "frontier" else sorted(pts)
        entry = {"points": len(pts), "fit_points": len(used), "on": on}
        if len(used) >= 3:
            entry.update(fit_power_law(*zip(*used)))
        else:
            entry["note"] = f"{len(used)} point(s) on the {on}: a 3-parameter fit needs 3"
        out["loss_vs_compute"][vocab] = entry
        for label in dict.fromkeys(r["budget_label"] for r in rows if r["vocab"] == vocab):
            group = sorted(
                (int(r["params"]), float(r["val_loss"]), r["model"])
                for r in done
                if r["vocab"] == vocab and r["budget_label"] == label and r["params"]
            )
            if not group:
                continue
            e = {
                "points": len(group),
                "best_model": min(group, key=lambda t: t[1])[2],
                "best_params": min(group, key=lambda t: t[1])[0],
                "best_loss": min(t[1] for t in group),
            }
            if len(group) >= 3:
                e.update(fit_power_law([g[0] for g in group], [g[1] for g in group]))
            out["loss_vs_params"].setdefault(vocab, {})[label] = e
    return out


# ---------------------------------------------------------------- reporting: table and plots
def write_results_csv(rows: Sequence[dict], path: str) -> None:
    keys = [
        "vocab",
        "model",
        "budget_label",
        "budget",
        "steps",
        "status",
        "params",
        "flops_total",
        "tokens_total",
        "train_loss",
        "val_loss",
        "workdir",
    ]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _g(v, fmt=".4g") -> str:
    return "" if v is None else format(v, fmt)


def summary_markdown(sweep: Sweep, rows: Sequence[dict], fits: Mapping) -> str:
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"config `{sweep.config}`; {len(sweep.models)} model sizes x {len(sweep.vocabs)} vocabularies x "
        f"{len(sweep.budgets)} budgets ({sweep.budget_unit}); "
        f"{sum(r['status'] == 'finished' for r in rows)} of {len(rows)} runs finished.",
        "",
        "## Loss vs compute: L = a * C^-b + c (C = training FLOPs)",
        "",
        "| vocab | a | b | c | rmse | points (fit / all) |",
        "|---|---|---|---|---|---|",
    ]
    for vocab, e in fits["loss_vs_compute"].items():
        if "b" in e:
            lines.append(
                f"| {vocab} | {e['a']:.4g} | {e['b']:.4f} | {e['c']:.4f} | {e['rmse']:.2g} | "
                f"{e['fit_points']} / {e['points']} ({e['on']}) |"
            )
        else:
            lines.append(f"| {vocab} | | | | | {e['fit_points']} / {e['points']}: {e['note']} |")
    lines += [
        "",
        "## Loss vs parameters at fixed budget: L = a * N^-b + c",
        "",
        "| vocab | budget | best model | best params | best loss | b | points |",
        "|---|---|---|---|---|---|---|",
    ]
    for vocab, per in fits["loss_vs_params"].items():
        for label, e in per.items():
            lines.append(
                f"| {vocab} | {label} | {e['best_model']} | {e['best_params']:,} | {e['best_loss']:.4f} | "
                f"{_g(e.get('b'), '.4f')} | {e['points']} |"
            )
    lines += [
        "",
        "## Runs",
        "",
        "| vocab | model | budget | steps | params | FLOPs | val loss | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = "" if r["params"] is None else format(int(r["params"]), ",")
        lines.append(
            f"| {r['vocab']} | {r['model']} | {r['budget_label']} | {r['steps']} | {params} | "
            f"{_g(r['flops_total'], '.3g')} | {_g(r['val_loss'], '.4f')} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


def plot_sweep(rows: Sequence[dict], fits: Mapping, root: str) -> list[str]:
    """scaling.png (loss vs compute, one colour per vocabulary, fitted curves) and loss_vs_params.png."""
    from infinity_jax.plots import loglog_png  # here: matplotlib is only needed for the report

    done = [r for r in rows if r["val_loss"] is not None and r["flops_total"]]
    series = []
    for vocab, e in fits["loss_vs_compute"].items():
        pts = [(float(r["flops_total"]), float(r["val_loss"])) for r in done if r["vocab"] == vocab]
        s = {"label": vocab + (f": b={e['b']:.3f}" if "b" in e else ""), "points": pts}
        if "b" in e and pts:
            xs = np.geomspace(min(p[0] for p in pts), max(p[0] for p in pts), 64)
            s["line"] = list(zip(xs.tolist(), power_law(e, xs).tolist()))
        series.append(s)
    paths = [os.path.join(root, "scaling.png"), os.path.join(root, "loss_vs_params.png")]
    loglog_png(paths[0], series, "validation loss vs training compute (fit: a C^-b + c)", "training FLOPs", "val loss")
    series, markers = [], "os^d"
    for vi, vocab in enumerate(dict.fromkeys(r["vocab"] for r in rows)):
        for label in dict.fromkeys(r["budget_label"] for r in rows):
            pts = sorted(
                (float(r["params"]), float(r["val_loss"]))
                for r in done
                if r["vocab"] == vocab and r["budget_label"] == label and r["params"]
            )
            if pts:
                series.append({"label": f"{vocab} {label}", "points": pts, "line": pts, "marker": markers[vi % 4]})
    loglog_png(paths[1], series, "validation loss vs parameters, one line per budget", "parameters", "val loss")
    return paths


def report(sweep: Sweep, runs: Sequence[Run], root: str, fit_on: str = "frontier") -> dict:
    """Collect, fit, and write results.csv, fit.json, summary.md and the plots under root."""
    rows = collect(runs)
    fits = fit_sweep(rows, fit_on)
    os.makedirs(root, exist_ok=True)
    write_results_csv(rows, os.path.join(root, "results.csv"))
    with open(os.path.join(root, "fit.json"), "w") as f:
        json.dump(fits, f, indent=1)
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write(summary_markdown(sweep, rows, fits))
    plot_sweep(rows, fits, root)
    return {"rows": rows, "fits": fits}


# ---------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python launch/sweep.py", description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", required=True, help="sweep file[:arg], e.g. configs/sweeps/shapes_tiny.py")
    ap.add_argument("--root", required=True, help="folder of the runs (ROOT/VOCAB/MODEL/BUDGET) and reports")
    ap.add_argument(
        "--launch",
        choices=("local", "print", "none"),
        default="local",
        help="local: run unfinished runs here, one after another (or --jobs at a time); "
        "print: print their commands; none: only collect and fit",
    )
    ap.add_argument("--fit-only", action="store_true", help="same as --launch none")
    ap.add_argument("--jobs", type=int, default=1, help="local runs at a time (CPU sweeps; 1 on accelerators)")
    ap.add_argument("--launcher", choices=LAUNCHERS, default=None, help="--launch print format (default: the sweep's)")
    ap.add_argument("--launcher-args", default=None, help="arguments for the launcher, e.g. '--tpu t --zone z'")
    ap.add_argument(
        "--fit-on", choices=("frontier", "all"), default="frontier", help="which runs the loss-vs-compute fit uses"
    )
    ap.add_argument(
        "--compile-cache",
        default=None,
        help="XLA compilation cache the local runs share (default ROOT/xla_cache; '' disables)",
    )
    args = ap.parse_args(argv)
    sweep = load_sweep(args.sweep)
    runs = expand(sweep, args.root)
    launch = "none" if args.fit_only else args.launch
    failed = 0
    if launch == "print":
        launcher = args.launcher or sweep.launcher
        if args.launcher_args is not None:
            largs = args.launcher_args
        else:  # the sweep's launcher arguments belong to the sweep's launcher
            largs = sweep.launcher_args if launcher == sweep.launcher else ""
        todo = [r for r in runs if not r.finished]
        print(f"# {len(todo)} of {len(runs)} runs to launch ({len(runs) - len(todo)} finished)", file=sys.stderr)
        for r in todo:
            print(launcher_command(r, launcher, largs))
        return 0  # stdout is only commands (pipe it to a shell); collect later with --fit-only
    elif launch == "local":
        if runner is None:
            cache = (
                os.path.join(os.path.abspath(args.root), "xla_cache")
                if args.compile_cache is None
                else args.compile_cache
            )
            env = (
                {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"} if cache else {}
            )
            runner = lambda cmd, wd: subprocess_runner(cmd, wd, env)  # noqa: E731
        status = launch_local(runs, runner, args.jobs, log=lambda m: print(m, flush=True))
        failed = sum(rc != 0 for rc in status.values())
        for wd, rc in status.items():
            if rc:
                print(f"sweep: run {wd} exited {rc}; see {os.path.join(wd, 'train.log')}", file=sys.stderr)
    if "://" in args.root:
        print("sweep: a remote root cannot be collected here; --fit-only on a local copy", file=sys.stderr)
        return 1 if failed else 0
    out = report(sweep, runs, os.path.abspath(args.root), args.fit_on)
    for vocab, e in out["fits"]["loss_vs_compute"].items():
        msg = f"L = {e['a']:.4g} * C^-{e['b']:.4f} + {e['c']:.4f}" if "b" in e else e["note"]
        print(f"sweep {sweep.name} {vocab}: {msg}")
    print(f"sweep: wrote {os.path.join(os.path.abspath(args.root), 'summary.md')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
