"""Training metrics: peak FLOP/s per device kind, MFU, JSONL and TensorBoard event files.

TensorBoard files are written by a small writer of our own (TFRecord framing + the few protobuf
fields of a scalar `Event`), so neither TensorFlow nor tensorboardX is needed. Only process 0
writes; other processes get a writer that does nothing.
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from typing import Mapping

import jax

# Dense bf16 peak FLOP/s per chip (vendor figures, no sparsity). Matched against
# jax.Device.device_kind, lower-cased, first hit wins (so 'v5 lite' before 'v5').
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("v6 lite", 918e12), ("v6e", 918e12),      # TPU v6e (Trillium)
    ("v5 lite", 197e12), ("v5e", 197e12),      # TPU v5e
    ("v5p", 459e12), ("tpu v5", 459e12),       # TPU v5p (device_kind 'TPU v5')
    ("tpu v4", 275e12),
    ("h200", 989e12),                          # H200 SXM: same compute as H100 SXM
    ("h100 pcie", 756e12), ("h100", 989e12),   # H100 SXM (the PCIe card is slower)
    ("a100", 312e12),
)


def peak_flops_per_device(device_kind: str | None = None) -> float | None:
    """Peak bf16 FLOP/s of one device, or None ('unknown', e.g. CPU)."""
    kind = (jax.devices()[0].device_kind if device_kind is None else device_kind).lower()
    for key, flops in PEAK_BF16_FLOPS:
        if key in kind:
            return flops
    return None


def throughput(step_time_s: float, global_batch: int, tokens_per_example: float | None = None,
               flops_per_step: float | None = None, num_devices: int | None = None,
               peak_per_device: float | None = None) -> dict:
    """images/s, tokens/s and MFU for one update taking step_time_s over the whole global batch.
    flops_per_step: model FLOPs of one update (forward + backward, whole global batch)."""
    out = {"step_time_s": step_time_s, "images_per_s": global_batch / step_time_s}
    if tokens_per_example:
        out["tokens_per_s"] = global_batch * tokens_per_example / step_time_s
    if flops_per_step and peak_per_device:
        n = jax.device_count() if num_devices is None else num_devices
        out["mfu"] = flops_per_step / step_time_s / (peak_per_device * n)
    return out


# ------------------------------------------------------------------ TensorBoard events, no TF
def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    key = _varint((num << 3) | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def _event(wall_time: float, step: int, scalars: Mapping[str, float] | None = None, file_version: str | None = None) -> bytes:
    """tensorflow.Event: wall_time=1 (double), step=2 (int64), file_version=3, summary=5 {value=1 {tag=1, simple_value=2}}."""
    msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step & (2**64 - 1)))
    if file_version is not None:
        msg += _field(3, 2, file_version.encode())
    if scalars:
        values = b"".join(_field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
                          for tag, v in scalars.items())
        msg += _field(5, 2, values)
    return msg


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


class EventWriter:
    """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>` (readable by TensorBoard)."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
        self._f = open(self.path, "ab")
        self._f.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._f.write(_record(_event(time.time(), step, {k: float(v) for k, v in values.items()})))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_events(path: str) -> list[tuple[int, dict[str, float]]]:
    """(step, {tag: value}) per scalar event of an event file; checks every CRC (for tests and tools)."""
    def varint(buf, i):
        n = shift = 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n, i

    def fields(buf):
        i = 0
        while i < len(buf):
            key, i = varint(buf, i)
            num, wire = key >> 3, key & 7
            if wire == 0:
                v, i = varint(buf, i)
            elif wire == 1:
                v, i = buf[i:i + 8], i + 8
            elif wire == 5:
                v, i = buf[i:i + 4], i + 4
            else:
                n, i = varint(buf, i)
                v, i = buf[i:i + n], i + n
            yield num, v

    out = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8:i + 12])[0] != _masked_crc(header):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        body = data[i + 12:i + 12 + n]
        if struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] != _masked_crc(body):
            raise ValueError(f"{path}: bad data CRC at byte {i}")
        i += 16 + n
        step, scalars = 0, {}
        for num, v in fields(body):
            if num == 2:
                step = v
            elif num == 5:
                for _, value in fields(v):
                    f = dict(fields(value))
                    scalars[f[1].decode()] = struct.unpack("<f", f[2])[0]
        if scalars:
            out.append((step, scalars))
    return out


# ------------------------------------------------------------------ the writer the loop uses
class MetricsWriter:
    """JSONL (`workdir/metrics.jsonl`, one object per logged step) + TensorBoard (`workdir/tb`).
    Process 0 only; elsewhere every method is a no-op (and last() reads nothing).

    start_step: the step the run starts from. The file keeps the rows of steps up to it and loses those after
    (steps a restarted run redoes, logged before the crash that lost their checkpoint), rewritten atomically, so
    it holds one row per step; 0 empties it (a fresh run). None: append to the file as it is."""

    def __init__(self, workdir: str, enabled: bool | None = None, tensorboard: bool = True,
                 start_step: int | None = None):
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
            self._tb = EventWriter(os.path.join(workdir, "tb")) if tensorboard else None

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
            self._tb.scalars(step, {k: float(v) for k, v in metrics.items()})

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
        from infinity_jax.convert.common import atomic_write
        atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
    return kept


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
