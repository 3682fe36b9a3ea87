"""The `infinity-jax` dispatcher: bad input is one line naming it (exit status 2), not a traceback."""

from __future__ import annotations

import os

import pytest

from infinity_jax import commands


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "prepare", "--source", "{missing}", "--out", "{tmp}/data"], "source '{missing}' does not exist"),
        (["pretrain-text", "--data", "{missing}", "--out", "{tmp}/text"], "dataset path '{missing}' does not exist"),
        (
            ["export-torch", "--checkpoint", "{missing}", "--out", "{tmp}/gpt.pth"],
            "transformer checkpoint '{missing}' does not exist",
        ),
    ],
)
def test_missing_inputs_are_one_line_errors_with_status_2(tmp_path, capsys, argv, message):
    fill = {"missing": str(tmp_path / "nowhere"), "tmp": str(tmp_path)}
    assert commands.main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    command = " ".join(commands.resolve(argv)[0])  # e.g. data prepare
    assert err.startswith(f"infinity-jax {command}: error: ") and message.format(**fill) in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_other_exceptions_keep_their_traceback(monkeypatch):
    """Only bad input is shortened: a bug in a command still raises."""
    import types

    broken = types.ModuleType("broken_command")
    broken.main = lambda argv: 1 / 0
    monkeypatch.setitem(__import__("sys").modules, "broken_command", broken)
    monkeypatch.setitem(commands.COMMANDS, "broken", ("broken_command:main", "raises"))
    with pytest.raises(ZeroDivisionError):
        commands.main(["broken"])


def test_no_tpu_probe_noise_on_a_cpu_machine(tmp_path):
    """jax's INFO line about a missing TPU runtime does not reach a command's output on CPU/GPU."""
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "infinity_jax",
            "train",
            "--config",
            "configs/shapes.py:tiny",
            "--workdir",
            str(tmp_path / "run"),
            f"--config.data.path={str(tmp_path / 'none')!r}",
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert "Unable to initialize backend" not in r.stderr, r.stderr
