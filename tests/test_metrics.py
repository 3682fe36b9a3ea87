"""infinity_jax/train/metrics.py: metrics.jsonl rows and the TensorBoard event file (tensorboardX), read back
with an independent reader (tests/tb_events.py: framing checksums + tensorboardX's Event protos)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from infinity_jax.train import metrics
from tests import tb_events

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _event_file(workdir) -> str:
    (name,) = os.listdir(os.path.join(workdir, "tb"))
    assert name.startswith("events.out.tfevents.")
    return os.path.join(workdir, "tb", name)


def test_scalars_reach_the_event_file_with_their_tags_steps_and_values(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path), enabled=True)
    w.write(1, {"loss": 2.5, "lr": 3e-4})
    w.write(2, {"loss": np.float32(1.25), "grad_norm": 0.1})
    w.close()
    path = _event_file(tmp_path)
    protos = tb_events.read_event_protos(path)
    assert protos[0].file_version == "brain.Event:2"  # what TensorBoard checks first
    assert tb_events.read_events(path) == [
        (1, {"loss": 2.5, "lr": pytest.approx(3e-4)}),
        (2, {"loss": 1.25, "grad_norm": pytest.approx(0.1)}),
    ]
    walls = {e.step: e.wall_time for e in protos if e.summary.value}
    assert abs(walls[2] - os.path.getmtime(path)) < 60  # real wall times
    rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert rows == [{"step": 1, "loss": 2.5, "lr": 3e-4}, {"step": 2, "loss": 1.25, "grad_norm": pytest.approx(0.1)}]


def test_non_finite_values_are_strings_in_jsonl_and_floats_in_tensorboard(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path), enabled=True)
    w.write(3, {"loss": float("nan"), "grad_norm": float("inf")})
    w.close()
    assert (tmp_path / "metrics.jsonl").read_text() == json.dumps({"step": 3, "loss": "nan", "grad_norm": "inf"}) + "\n"
    ((step, values),) = tb_events.read_events(_event_file(tmp_path))
    assert step == 3 and math.isnan(values["loss"]) and values["grad_norm"] == math.inf


def test_a_restart_marks_the_redone_steps_for_tensorboard_to_hide(tmp_path):
    """start_step S: the new event file starts with a file_version event at step S + 1 (TensorBoard's purge
    marker: the older files' events from that step on are dropped, as metrics.jsonl drops their rows)."""
    metrics.MetricsWriter(str(tmp_path / "resumed"), enabled=True, start_step=4).close()
    purge = [e.step for e in tb_events.read_event_protos(_event_file(tmp_path / "resumed")) if e.file_version]
    assert purge == [0, 5]
    metrics.MetricsWriter(str(tmp_path / "appended"), enabled=True).close()  # start_step None: nothing hidden
    assert [e.step for e in tb_events.read_event_protos(_event_file(tmp_path / "appended"))] == [0]


def test_a_disabled_writer_writes_nothing_and_tensorboard_can_be_off(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path / "off"), enabled=False)
    w.write(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "off").exists()
    w = metrics.MetricsWriter(str(tmp_path / "jsonl"), enabled=True, tensorboard=False)
    w.write(1, {"loss": 1.0})
    w.close()
    assert os.listdir(tmp_path / "jsonl") == ["metrics.jsonl"]


def test_the_reader_rejects_a_damaged_event_file(tmp_path):
    """The checks of tests/tb_events.py are real: one flipped byte or a cut tail is an error."""
    w = metrics.MetricsWriter(str(tmp_path), enabled=True, tensorboard=True)
    w.write(1, {"loss": 1.0})
    w.close()
    data = open(_event_file(tmp_path), "rb").read()
    bad = tmp_path / "bad"
    bad.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(ValueError, match="bad data checksum"):
        tb_events.read_records(str(bad))
    bad.write_bytes(data[:-2])
    with pytest.raises(ValueError, match="cut short"):
        tb_events.read_records(str(bad))


def test_the_event_writer_leaves_torch_unimported_and_importable(tmp_path):
    """tensorboardX would import torch (seconds and memory in a JAX run); the writer keeps it out, and a
    later `import torch` still works (the block is lifted)."""
    code = textwrap.dedent("""
        import importlib.util, sys
        from infinity_jax.train import metrics
        w = metrics.MetricsWriter(sys.argv[1], enabled=True)
        w.write(1, {"loss": 1.0})
        w.close()
        assert "torch" not in sys.modules, "tensorboardX imported torch"
        importlib.util.find_spec("torch")  # ValueError if sys.modules still blocked it
    """)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert tb_events.read_events(_event_file(tmp_path)) == [(1, {"loss": 1.0})]
