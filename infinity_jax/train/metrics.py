"""Training metrics: peak FLOP/s per device kind, MFU, JSONL and TensorBoard event files.

TensorBoard event files are written by tensorboardX (no TensorFlow needed). Only process 0 writes;
other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

import jax

from infinity_jax.fileio import atomic_write

# Dense bf16 peak FLOP/s per chip (vendor figures, no sparsity). Matched against
# jax.Device.device_kind, lower-cased, first hit wins (so 'v5 lite' before 'v5').
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("v6 lite", 918e12),
    ("v6e", 918e12),  # TPU v6e (Trillium)
    ("v5 lite", 197e12),
    ("v5e", 197e12),  # TPU v5e
    ("v5p", 459e12),
    ("tpu v5", 459e12),  # TPU v5p (device_kind 'TPU v5')
    ("tpu v4", 275e12),
    ("h200", 989e12),  # H200 SXM: same compute as H100 SXM
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # H100 SXM (the PCIe card is slower)
    ("a100", 312e12),
)
# Dense float32 peak FLOP/s (no TF32) of the GPUs, matched the same way.
PEAK_FP32_FLOPS: tuple[tuple[str, float], ...] = (("h200", 67e12), ("h100", 67e12), ("a100", 19.5e12))


def peak_flops_per_device(device_kind: str | None = None, dtype: str = "bfloat16") -> float | None:
    """Peak FLOP/s of one device (the first local one by default) for a compute dtype, or None where unknown
    (a CPU, a dtype without a row)."""
    kind = (jax.devices()[0].device_kind if device_kind is None else device_kind).lower()
    table = {"bfloat16": PEAK_BF16_FLOPS, "float32": PEAK_FP32_FLOPS}.get(str(dtype), ())
    for key, flops in table:
        if key in kind:
            return flops
    return None


def throughput(
    step_time_s: float,
    global_batch: int,
    tokens_per_example: float | None = None,
    flops_per_step: float | None = None,
    num_devices: int | None = None,
    peak_per_device: float | None = None,
) -> dict:
    """images/s, tokens/s and MFU for one update taking step_time_s over the whole global batch.
    flops_per_step: model FLOPs of one update (forward + backward, whole global batch)."""
    out = {"step_time_s": step_time_s, "images_per_s": global_batch / step_time_s}
    if tokens_per_example:
        out["tokens_per_s"] = global_batch * tokens_per_example / step_time_s
    if flops_per_step and peak_per_device:
        n = jax.device_count() if num_devices is None else num_devices
        out["mfu"] = flops_per_step / step_time_s / (peak_per_device * n)
    return out


# ------------------------------------------------------------------ TensorBoard events (tensorboardX)
# The writer thread flushes the event file at most this many seconds after a write (TensorBoard itself
# reloads every 5 s); a killed run can lose that much of tb/, never of metrics.jsonl (flushed per row).
TB_FLUSH_SECS = 5


def _summary_writer_class():
    """tensorboardX.SummaryWriter, imported without torch where torch is installed but not yet imported:
    tensorboardX imports it only to accept torch tensors, which would cost a JAX run seconds and memory."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` now raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def tensorboard_writer(logdir: str, start_step: int | None = None):
    """A tensorboardX SummaryWriter on `logdir` (a new `events.out.tfevents.<time>.<host>` file in it).
    start_step: the step a run restarts from; TensorBoard then hides the events of the later steps an
    earlier event file logged (steps the restarted run redoes), as metrics.jsonl drops their rows."""
    purge = None if start_step is None else start_step + 1
    return _summary_writer_class()(logdir, flush_secs=TB_FLUSH_SECS, purge_step=purge)


# ------------------------------------------------------------------ the writer the loop uses
class MetricsWriter:
    """JSONL (`workdir/metrics.jsonl`, one object per logged step, flushed per row) + TensorBoard scalars
    (`workdir/tb`, one scalar event per metric, flushed within TB_FLUSH_SECS and on close).
    Process 0 only; elsewhere every method is a no-op (and last() reads nothing).

    start_step: the step the run starts from. The file keeps the rows of steps up to it and loses those after
    (steps a restarted run redoes, logged before the crash that lost their checkpoint), rewritten atomically, so
    it holds one row per step; 0 empties it (a fresh run). None: append to the file as it is."""

    def __init__(
        self, workdir: str, enabled: bool | None = None, tensorboard: bool = True, start_step: int | None = None
    ):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = self._tb = None
        self._kept: list[dict] = []
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if start_step is not None:
                self._kept = truncate_jsonl(self.path, start_step)
            self._jsonl = open(self.path, "a")
            self._tb = tensorboard_writer(os.path.join(workdir, "tb"), start_step) if tensorboard else None

    def last(self, key: str) -> float | None:
        """The value of `key` in the last row that has it among those kept from an earlier call (start_step)."""
        for row in reversed(self._kept):
            if key in row:
                return row[key]
        return None

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            now = time.time()  # one wall time for the step's scalars
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), step, walltime=now)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _parse_rows(lines) -> list[dict]:
    """The rows of a metrics.jsonl; a line cut short (a process killed mid-write) or without a step is skipped."""
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def truncate_jsonl(path: str, last_step: int) -> list[dict]:
    """Keeps the rows of `path` up to step `last_step` (none when it is 0), rewriting the file atomically when
    that drops any; returns the rows kept."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [r for r in _parse_rows(lines) if 0 < last_step and r["step"] <= last_step]
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
    return kept


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
