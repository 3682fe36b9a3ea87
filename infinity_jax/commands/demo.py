"""`infinity-jax demo [--workdir runs/demo] [--minutes 20]`: the whole system, for real, on one CPU.

Stages (each resumable: rerunning the command skips finished stages and resumes the others):
  1. data        the synthetic shapes dataset (32x32 by default, GenEval-style captions, objects in
                 fixed slots by count unless --layout random) -> WORKDIR/data
  2. text        a small byte-level T5 pretrained on the training captions (text/pretrain.py: the
                 offline stand-in for Flan-T5; --text-steps 0 keeps a random one) -> WORKDIR/text_encoder
  3. tokenizer   a BSQ-VAE trained on it (configs/tokenizer_shapes.py, with its prefix loss)
                 -> WORKDIR/tokenizer
  4. transformer Infinity with bitwise self-correction and CFG dropout (configs/shapes.py), on
                 the trained tokenizer and the frozen text encoder -> WORKDIR/transformer
  5. sample      held-out prompts (a dataset seed never trained on), CFG -> WORKDIR/samples
  6. evaluate    prompt adherence with the shapes evaluator (infinity-jax eval shapes), of the
                 samples and of tokenizer reconstructions; report -> WORKDIR/report:
                 samples.png (prompt under each image), reconstructions.png, loss_curves.png,
                 scores.json, summary.txt
Step counts come from the time budget: each training stage first times a few steps of its own
(a throwaway calibration run), then plans as many steps as fit its time (the tokenizer: a fixed share
of the budget; the transformer: what is left, less 30 s for sampling and the report); the plan is
saved in WORKDIR/plan.json so a resumed demo trains exactly the planned run. A planned stage trains in two
segments: to a re-plan point (REPLAN_AT of its planned steps, saved there, its lr still near the peak), then,
re-planned at the step time measured over that segment for the time left (also saved in plan.json), to
the new total (train.reschedule: the lr schedule recomputed for it), so a calibration timed on a busy
moment costs no steps. Each segment gets a time limit (train.time_limit_s: the stage's budget left), so a
machine that slows down ends the stage early instead of overrunning the budget. The transformer trains on
the tokenizer's latents, encoded once -> WORKDIR/latents.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

from infinity_jax import config_util, fileio, generate, plots, run_config
from infinity_jax.commands import pretrain_text, train_tokenizer
from infinity_jax.commands.data import categories_arg
from infinity_jax.data import shapes, sources
from infinity_jax.data.shapes import SAMPLE_CFG, SAMPLE_TAU, held_out_prompts
from infinity_jax.errors import UsageError
from infinity_jax.eval import shapes as shapes_eval
from infinity_jax.runs import EXIT_PREEMPTED, FINAL_FILE
from infinity_jax.text import pretrain
from infinity_jax.text.t5 import T5Config
from infinity_jax.train import trainer
from infinity_jax.train.loop import FINISHED

log = logging.getLogger("infinity_jax.demo")
TOKENIZER_SHARE = 0.35  # of the budget (--tokenizer-share); the transformer gets what is left, less FINISH_S
FINISH_S = 30.0  # kept back for what follows training: sampling, evaluation, report (8 s measured)
PLAN_FRACTION = 0.85  # of a stage's budget its planned steps fill at the calibrated rate; the rest: compile,
# checkpoints and a shared machine's drift (a run's mean step is slower than its calibration)
STAGE_TAIL_S = 20.0  # a stage's work past its time limit: the logging window it stops at, the last checkpoint,
# its held-out evaluation (the limit only acts when the machine slows after calibrating)
CALIBRATION_STEPS = 10  # per timing window (two windows); with 5 the plan was off by 8-10% either way
REPLAN_AT = 0.2  # of a calibrated stage's planned steps: where it re-plans at the step time measured so far (a
# calibration on a busy moment plans too few steps); early, while the lr is still near its peak (lin0,
# final_frac 0.1: about 0.9 of it), so a reschedule barely moves it
REPLAN_ROWS = 10  # the recent metrics rows (compile windows excluded) whose median step time the re-plan takes
# the text stage has a fixed step count, not a share of --minutes: 145 s for 2,400 steps on the slower
# 2-core development machine (README, "Text encoder"); with a minute for the rest, the least budget to take
TEXT_SECONDS_PER_STEP, MIN_MINUTES_BESIDE_TEXT = 145 / 2400, 1.0


def _stage_header(name: str, minutes: float | None = None):
    extra = f" (budget {minutes:.1f} min)" if minutes is not None else ""
    print(f"\n== demo: {name}{extra}", file=sys.stderr, flush=True)


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def _seconds_per_step(run_fn, cfg, workdir, steps: int) -> float:
    """Median step time of a short throwaway run (compile excluded), from its metrics.jsonl."""
    shutil.rmtree(workdir, ignore_errors=True)
    cal = config_util.apply_overrides(
        cfg,
        [
            f"train.total_steps={2 * steps}",
            f"train.log_every={steps}",
            "optim.warmup_steps=1",
            "checkpoint.enabled=False",
            "train.progress_bar=False",
        ],
    )
    run_fn(cal, workdir)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    times = [r["step_time_s"] for r in rows if "step_time_s" in r]
    shutil.rmtree(workdir, ignore_errors=True)
    return float(times[-1]) if times else 1.0  # the second window: caches warm, compile excluded


def plan_steps(args, name: str, run_fn, cfg, workdir: str, plan: dict, budget_s) -> int:
    """Steps for stage `name` that fit in budget_s() seconds, asked after the calibration run (saved in
    the plan, reused on resume)."""
    if name in plan:
        return plan[name]["steps"]
    fixed = getattr(args, f"{name}_steps", None)
    if fixed:  # given on the command line: no calibration
        plan[name] = {"steps": int(fixed)}
        fileio.write_json(os.path.join(args.workdir, "plan.json"), plan)
        return int(fixed)
    sec = _seconds_per_step(run_fn, cfg, workdir + ".calibrate", steps=CALIBRATION_STEPS)
    seconds = budget_s()
    steps = int(max(args.min_steps, min(args.max_steps, seconds * PLAN_FRACTION / sec)))
    plan[name] = {"steps": steps, "seconds_per_step": sec, "budget_s": seconds}
    fileio.write_json(os.path.join(args.workdir, "plan.json"), plan)
    print(f"[demo] {name}: {sec * 1000:.0f} ms/step -> {steps} steps", file=sys.stderr)
    return steps


def with_steps(cfg, steps: int, time_limit_s: float = 0.0, warmup_of: int | None = None):
    """The stage's config for its planned step count (warm-up at most a tenth of the run, or of warmup_of
    steps: a re-planned run keeps its first plan's; at most about four checkpoints and 200 metric rows: the
    tiny test configs save every few steps, to exercise resuming, and log every step, which waits for each
    step's result) and time limit (0: none)."""
    warmup = min(int(cfg.optim.warmup_steps), max(1, (warmup_of or steps) // 10))
    over = [
        f"train.total_steps={steps}",
        f"optim.warmup_steps={warmup}",
        f"train.time_limit_s={time_limit_s}",
        f"checkpoint.every={max(int(cfg.checkpoint.every), steps // 4)}",
        f"train.log_every={max(int(cfg.train.log_every), steps // 200)}",
    ]
    if cfg.get("sample") and int(cfg.sample.get("every", 0)) > 0:  # about four progress grids a run
        over.append(f"sample.every={max(int(cfg.sample.every), steps // 4)}")
    return config_util.apply_overrides(cfg, over)


def time_limit(plan: dict, name: str) -> float:
    """train.time_limit_s of a stage whose steps were planned from a timing run: the budget they were
    planned for (once re-planned: the budget left then), less STAGE_TAIL_S (the transformer's is the time
    left, so the demo ends in time; the tokenizer's is its share, so it cannot take the transformer's time).
    None (0) for step counts given on the command line, which must all run."""
    stage = plan.get(name, {})
    budget = stage.get("replan", stage).get("budget_s")
    return max(1.0, budget - STAGE_TAIL_S) if "seconds_per_step" in stage else 0.0


def planned_steps(plan: dict, name: str) -> int:
    """The stage's planned steps: the re-planned total once it re-planned."""
    stage = plan[name]
    return stage.get("replan", stage)["steps"]


def steps_run(plan: dict, name: str, steps: int) -> str:
    """'872 steps', or '1700 of 1838 planned steps (time limit)' for a stage its time limit cut short."""
    planned = planned_steps(plan, name) if name in plan else steps
    return f"{steps} steps" if steps >= planned else f"{steps} of {planned} planned steps (time limit)"


def calibrated_rate(plan: dict, name: str) -> str:
    """' (258 ms/step calibrated)' for a stage whose steps were planned from a timing run, ' (planned 889 at
    485 ms/step, re-planned to 1468 at 290 ms/step)' once it re-planned, else '': a slower machine fits fewer
    steps in the same minutes, and this says so in the report."""
    stage = (plan or {}).get(name, {})
    if "replan" in stage:
        r = stage["replan"]
        return (
            f" (planned {stage['steps']} at {stage['seconds_per_step'] * 1000:.0f} ms/step, "
            f"re-planned to {r['steps']} at {r['seconds_per_step'] * 1000:.0f} ms/step)"
        )
    sec = stage.get("seconds_per_step")
    return f" ({sec * 1000:.0f} ms/step calibrated)" if sec else ""


def measured_seconds_per_step(workdir: str, until: int, default: float) -> float:
    """Median step time of the last REPLAN_ROWS metrics rows up to step `until` (a call's first row, which
    follows its compile, left out); `default` when there are none."""
    path = os.path.join(workdir, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    times = [r["step_time_s"] for r in rows if "step_time_s" in r and "compile_time_s" not in r and r["step"] <= until]
    return float(np.median(times[-REPLAN_ROWS:])) if times else default


def replan(args, name: str, plan: dict, workdir: str, first: dict, elapsed_s: float) -> None:
    """Re-plans stage `name` where its first segment stopped (result `first`, elapsed_s seconds into the stage's
    budget): the steps that fill PLAN_FRACTION of the time left, less the segment's set-up (what it took beyond
    its steps: the next segment pays it again), at the step time measured so far (plan[name]['replan'], saved:
    a rerun keeps it)."""
    stage, at = plan[name], int(first["step"])
    sec = measured_seconds_per_step(workdir, at, stage["seconds_per_step"])
    left = stage["budget_s"] - elapsed_s
    setup = max(0.0, elapsed_s - (at - int(first.get("start_step", 0))) * sec)
    steps = int(max(args.min_steps, at + 1, min(args.max_steps, at + (left - setup) * PLAN_FRACTION / sec)))
    stage["replan"] = {"at_step": at, "steps": steps, "seconds_per_step": sec, "budget_s": left, "setup_s": setup}
    fileio.write_json(os.path.join(args.workdir, "plan.json"), plan)
    print(
        f"[demo] {name}: re-planned at step {at}: {sec * 1000:.0f} ms/step -> {steps} steps in the {left:.0f} s "
        f"left, {setup:.0f} s of them set-up (planned {stage['steps']} at {stage['seconds_per_step'] * 1000:.0f} "
        "ms/step)",
        file=sys.stderr,
    )


def train_stage(args, name: str, run_fn, cfg, workdir: str, plan: dict) -> dict:
    """Stage `name` trained for its plan (plan_steps), or its final.json when it finished before. A calibrated
    stage stops (saved) at REPLAN_AT of its planned steps, re-plans there (replan) and goes on to the new total
    with train.reschedule; a rerun resumes whichever segment was cut. Step counts from the command line train
    in one run, as planned."""
    stage = plan[name]
    at = int(stage["steps"] * REPLAN_AT)
    if "seconds_per_step" in stage and "replan" not in stage and at > 0:
        t0 = time.perf_counter()
        first = _train_stage(
            name,
            run_fn,
            with_steps(cfg, stage["steps"], time_limit(plan, name)),
            workdir,
            stage["steps"],
            until_step=at,
        )
        if first.get("stopped") != "until_step":  # finished (final.json), or cut before the re-plan point
            return first
        replan(args, name, plan, workdir, first, time.perf_counter() - t0)
    steps = planned_steps(plan, name)
    cfg = with_steps(cfg, steps, time_limit(plan, name), warmup_of=stage["steps"])
    if "replan" in stage:
        cfg = config_util.apply_overrides(cfg, ["train.reschedule=True"])
    return _train_stage(name, run_fn, cfg, workdir, steps)


def run(args) -> dict:
    os.makedirs(args.workdir, exist_ok=True)
    plan_path = os.path.join(args.workdir, "plan.json")
    plan = _load_json(plan_path) if os.path.exists(plan_path) else {}
    t_start = time.perf_counter()

    # 1. data, at the tokenizer config's image size
    _stage_header("data")
    data_dir = os.path.join(args.workdir, "data")
    data_over = [f"data.path={data_dir!r}"]
    tok_cfg = run_config.load(f"tokenizer_shapes:{args.tokenizer_arg}", data_over)
    args.image_size = int(tok_cfg.data.image_size)
    sources.prepare(
        "shapes",
        data_dir,
        num_examples=args.num_examples,
        image_size=args.image_size,
        seed=0,
        layout=args.layout,
        categories=args.categories,
    )

    # 2. text encoder, pretrained on the training captions and then frozen (as Flan-T5 is)
    text_over, text_report = [], None
    if args.text_steps > 0:
        _stage_header("text encoder")
        text_dir = os.path.join(args.workdir, "text_encoder")
        text_report = pretrain_text_encoder(args, data_dir, text_dir)
        text_over = [f"text.path={text_dir!r}"]

    # 3. tokenizer
    tok_dir = os.path.join(args.workdir, "tokenizer")
    _stage_header("tokenizer", args.minutes * args.tokenizer_share)
    # train_tokenizer.run: the trainer plus the shapes evaluator
    plan_steps(
        args,
        "tokenizer",
        train_tokenizer.run,
        tok_cfg,
        tok_dir,
        plan,
        budget_s=lambda: args.minutes * 60 * args.tokenizer_share,
    )
    tok = train_stage(args, "tokenizer", train_tokenizer.run, tok_cfg, tok_dir, plan)

    # 4. transformer on the trained tokenizer, from its latents: the frozen encoder runs once per image
    # (data/latent_cache.py), not once per step
    gpt_dir = os.path.join(args.workdir, "transformer")
    latents = os.path.join(args.workdir, "latents")
    gpt_cfg = run_config.load(
        f"shapes:{args.model_arg}",
        data_over
        + text_over
        + [
            f"data.latent_cache={latents!r}",
            f"vae.config={tok['vae_config']!r}",
            f"vae.params={tok['vae_params']!r}",
            "vae.overrides=()",
            f"schedule={tok['config']['schedule']!r}",
            f"data.image_size={args.image_size}",
        ],
    )

    def seconds_left():
        return args.minutes * 60 - (time.perf_counter() - t_start) - FINISH_S

    _stage_header("transformer", seconds_left() / 60)
    plan_steps(args, "transformer", trainer.run, gpt_cfg, gpt_dir, plan, budget_s=seconds_left)
    gpt = train_stage(args, "transformer", trainer.run, gpt_cfg, gpt_dir, plan)

    # 5. sample held-out prompts
    _stage_header("sample")
    captions, truth = held_out_prompts(args.num_prompts, args.image_size, args.layout, args.categories)
    images = sample_prompts(args, gpt_dir, captions)

    # 6. evaluate and report
    _stage_header("evaluate")
    scores = {
        "samples": shapes_eval.evaluate(images, captions),
        "ground_truth": shapes_eval.evaluate(np.stack(truth), captions),
        "tokenizer_reconstructions": tok.get("shapes_eval", {}).get("reconstructions"),
        "tokenizer_recon": tok.get("recon"),
        "chance_reference": shapes_eval.chance_scores(truth, captions),
        "text_pretrain": text_report,
        "tokenizer_steps": tok["step"],
        "transformer_steps": gpt["step"],
        "transformer_val_loss": gpt.get("val_loss"),
        "transformer_val_loss_other_text": gpt.get("val_loss_other_text"),
        "categories": list(args.categories or shapes.CATEGORIES),
        "plan": plan,  # steps per stage and, when calibrated, this machine's seconds per step and the re-plan
        "minutes": (time.perf_counter() - t_start) / 60,
    }
    report(args, scores, images, captions, tok_dir, gpt_dir)
    return scores


class StageStopped(RuntimeError):
    """A training stage returned before its planned steps (SIGTERM: it saved a checkpoint to resume from)."""


def _train_stage(stage: str, run_fn, cfg, workdir: str, planned: int, until_step: int | None = None) -> dict:
    """A training stage's final.json: read when the stage finished before (only finished runs write
    it), else from run_fn(cfg, workdir[, until_step=]), which trains or resumes (to until_step: then it
    returns with 'stopped': 'until_step'). An interrupted run stops the demo: sampling a half-trained model
    would report a score of a run that did not happen."""
    final_path = os.path.join(workdir, FINAL_FILE)
    if os.path.exists(final_path):
        return _load_json(final_path)
    final = run_fn(cfg, workdir) if until_step is None else run_fn(cfg, workdir, until_step=until_step)
    if final.get("stopped", "done") not in FINISHED + (("until_step",) if until_step else ()):  # 'time_limit': by plan
        raise StageStopped(
            f"the {stage} stage stopped at step {final.get('step')} of {planned} "
            f"({final.get('stopped')}); its checkpoint is saved: rerun the same command to resume"
        )
    return final


def pretrain_text_encoder(args, data_dir: str, text_dir: str) -> dict:
    """The text stage: the transformer config's T5 (preset, width, text length) pretrained on the
    dataset's captions, saved as a Hugging Face folder; an existing folder is reused (resume)."""
    report_path = os.path.join(text_dir, "pretrain.json")
    if os.path.exists(report_path):
        return _load_json(report_path)
    text = config_util.load_config(f"shapes:{args.model_arg}").text
    config = T5Config.preset(str(text.preset), **text.model.to_dict())
    report = pretrain_text.pretrain_dataset(
        data_dir, text_dir, config, steps=args.text_steps, max_length=int(text.max_length), seed=int(text.seed)
    )
    print(
        f"[demo] text encoder: {report['captions']} captions, {args.text_steps} steps, {report['seconds']:.0f} s",
        file=sys.stderr,
    )
    return report


def sample_prompts(args, gpt_dir: str, captions: list[str]) -> np.ndarray:
    """Images for `captions` from the trained run (its config brings the VAE, text encoder, schedule), sampled
    into WORKDIR/samples (replaced whole on a rerun), the prompts in WORKDIR/held_out_prompts.txt (for
    `infinity-jax sample --prompts-file`)."""
    out = os.path.join(args.workdir, "samples")
    prompts_file = os.path.join(args.workdir, "held_out_prompts.txt")
    with open(prompts_file, "w") as f:
        f.write("\n".join(captions) + "\n")
    summary = generate.sample_to_folder(
        generate.SampleOptions(
            checkpoint=gpt_dir,
            out=out,
            prompts_file=prompts_file,
            cfg=str(args.cfg),
            tau=str(args.tau),
            top_k=900,
            top_p=args.top_p,
            seed=0,
            batch_size=min(16, len(captions)),
            progress=False,
            overwrite=True,
        )
    )
    return np.stack([shapes_eval.load_image(os.path.join(out, r["file"])) for r in summary["samples"]])


# ---------------------------------------------------------------- report
def report(args, scores, images, captions, tok_dir, gpt_dir):
    folder = os.path.join(args.workdir, "report")
    os.makedirs(folder, exist_ok=True)
    plots.captioned_grid(images, captions).save(os.path.join(folder, "samples.png"))
    recon = os.path.join(tok_dir, "reconstructions.png")
    if os.path.exists(recon):
        shutil.copy(recon, os.path.join(folder, "reconstructions.png"))
    curves = {}
    for name, d in (("tokenizer", tok_dir), ("transformer", gpt_dir)):
        path = os.path.join(d, "metrics.jsonl")
        if os.path.exists(path):
            rows = [json.loads(line) for line in open(path)]
            curves[name] = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    plots.line_plots(curves, title="training loss").save(os.path.join(folder, "loss_curves.png"))
    fileio.write_json(os.path.join(folder, "scores.json"), scores)
    s, plan = scores["samples"], scores.get("plan") or {}
    lines = [
        f"infinity-jax demo: {scores['minutes']:.1f} min on {os.cpu_count()} CPU core(s)",
        "text encoder: "
        + (
            f"pretrained {scores['text_pretrain']['steps']} steps on "
            f"{scores['text_pretrain']['captions']} captions, then frozen"
            if scores.get("text_pretrain")
            else "random, frozen"
        ),
        f"tokenizer: {steps_run(plan, 'tokenizer', scores['tokenizer_steps'])}"
        f"{calibrated_rate(plan, 'tokenizer')}; "
        f"recon {json.dumps(scores['tokenizer_recon'])}",
        f"tokenizer reconstructions, shapes evaluator overall: "
        f"{(scores['tokenizer_reconstructions'] or {}).get('overall')}",
        f"transformer: {steps_run(plan, 'transformer', scores['transformer_steps'])}"
        f"{calibrated_rate(plan, 'transformer')}; "
        f"held-out bit loss {scores['transformer_val_loss']:.4f}, "
        f"with other prompts' captions {scores['transformer_val_loss_other_text']:.4f}",
        f"held-out prompts ({len(captions)}{', ' + ','.join(args.categories) if args.categories else ''}), "
        "prompt adherence (GenEval-style):",
        *[f"  {k:14s} {v:.3f}" for k, v in s.items()],
        f"chance (images of other prompts) overall: {scores['chance_reference']['overall']:.3f}; "
        f"ground truth overall: {scores['ground_truth']['overall']:.3f}",
    ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(folder, "summary.txt"), "w") as f:
        f.write(text)
    print(text)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(
        prog="infinity-jax demo",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--workdir",
        default="runs/demo",
        help="folder of every stage's run, the samples and the report (a rerun resumes what is there)",
    )
    ap.add_argument("--minutes", type=float, default=20.0, help="time budget for the whole demo")
    ap.add_argument("--num-examples", type=int, default=20000, help="shapes training images")
    ap.add_argument("--num-prompts", type=int, default=120, help="held-out prompts to sample and score")
    ap.add_argument(
        "--layout",
        default="slots",
        choices=shapes.LAYOUTS,
        help="where the shapes dataset puts objects (data/shapes.py); with 'random' the layout "
        "is drawn cell by cell and adherence halves (docs/demo_experiments.md)",
    )
    ap.add_argument(
        "--categories",
        type=categories_arg,
        default=None,
        help="caption categories of the dataset and the held-out prompts, comma-separated "
        f"(default: all of {','.join(shapes.CATEGORIES)})",
    )
    ap.add_argument(
        "--tokenizer-arg",
        default="",
        help="configs/tokenizer_shapes.py argument (sets the image size), e.g. size=64,stride=8",
    )
    ap.add_argument("--model-arg", default="", help="configs/shapes.py argument, e.g. layers=4,width=128")
    ap.add_argument("--cfg", default=SAMPLE_CFG, help="CFG scale: a number or one per scale 'a,b,...'")
    ap.add_argument("--tau", default=SAMPLE_TAU, help="sampling temperature: a number or one per scale 'a,b,...'")
    ap.add_argument("--top-p", type=float, default=0.97, help="per-bit top-p of the held-out samples (0: off)")
    ap.add_argument(
        "--text-steps",
        type=int,
        default=pretrain.DEFAULT_STEPS,
        help="pretraining steps of the text encoder on the captions; 0: a random frozen T5",
    )
    ap.add_argument(
        "--tokenizer-share",
        type=float,
        default=TOKENIZER_SHARE,
        help="fraction of --minutes for training the tokenizer (the transformer gets the rest)",
    )
    ap.add_argument(
        "--tokenizer-steps",
        type=int,
        default=None,
        help="train the tokenizer this many steps (default: as many as fit its share of --minutes)",
    )
    ap.add_argument("--transformer-steps", type=int, default=None, help="likewise for the transformer")
    ap.add_argument("--min-steps", type=int, default=20, help="fewest steps a calibrated stage is planned for")
    ap.add_argument("--max-steps", type=int, default=20000, help="most steps a calibrated stage is planned for")
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        raise UsageError(f"--minutes {args.minutes}: expected a positive budget")
    least = max(args.text_steps, 0) * TEXT_SECONDS_PER_STEP / 60 + MIN_MINUTES_BESIDE_TEXT
    if args.minutes < least:
        raise UsageError(
            f"--minutes {args.minutes}: the text stage alone (--text-steps {args.text_steps}) takes "
            f"about {args.text_steps * TEXT_SECONDS_PER_STEP / 60:.1f} min on a 2-core CPU; expected at "
            f"least {least:.1f}, or fewer --text-steps"
        )
    if not 0 < args.tokenizer_share < 1:
        raise UsageError(f"--tokenizer-share {args.tokenizer_share}: expected a fraction between 0 and 1")
    for spec in (f"tokenizer_shapes:{args.tokenizer_arg}", f"shapes:{args.model_arg}"):
        config_util.load_config(spec)  # before anything is written: a bad argument raises a ConfigError
    args.workdir = os.path.abspath(args.workdir)  # orbax refuses relative checkpoint paths
    try:
        run(args)
    except StageStopped as e:
        print(f"infinity-jax demo: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0
