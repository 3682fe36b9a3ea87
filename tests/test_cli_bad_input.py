"""Bad command lines, one table: `infinity-jax <argv>` exits 2 with exactly one line on stderr that names the
bad value, prints nothing on stdout and writes nothing (run in-process through cli.main, from an empty folder)."""
from __future__ import annotations

import os

import pytest

from infinity_jax import cli

# argv ({tmp}: the empty working folder), a fragment of the error naming the bad value
CASES = [
    # schedules: --h-div-w must be a positive finite height / width (0 used to print every template)
    (["schedules", "--h-div-w", "-1"], "--h-div-w '-1': expected a positive finite aspect ratio"),
    (["schedules", "--h-div-w", "nan"], "--h-div-w 'nan'"),
    (["schedules", "--h-div-w", "0"], "--h-div-w '0'"),
    (["schedules", "--h-div-w", "inf"], "--h-div-w 'inf'"),
    (["schedules", "--h-div-w", "abc"], "--h-div-w 'abc'"),
    # params: a model name or any config spec with a `model` section
    (["params", "--config", "nosuch"], "--config 'nosuch': infinity config 'nosuch': expected one of"),
    (["params", "--config", "configs/nope.py"], "config 'configs/nope.py' not found"),
    (["params", "--config", "bsq_vae:d32"], "--config 'bsq_vae:d32': the config has no `model` section"),
    (["params", "--config", "2b", "--config", "configs/shapes.py:layers=abc"], "shapes layers='abc'"),
    # data prepare: a missing source, an empty request
    (["data", "prepare", "--source", "{tmp}/nowhere", "--out", "{tmp}/data"], "source '{tmp}/nowhere' does not exist"),
    (["data", "prepare", "--source", "shapes", "--num-examples", "0", "--out", "{tmp}/data"], "num_examples=0"),
    # bench: an unknown benchmark
    (["bench", "nosuch"], "unknown benchmark 'nosuch': expected one of attention, data, sample, train"),
    # config specs and overrides, as every command loads them (config: the launchers' local check)
    (["config", "shapes:tiny", "--config.model.dept=4"], "no field 'dept' in model"),
    (["config", "shapes:tiny", "--config.model.depth='deep'"], "model.depth is int"),
    (["config", "shapes:tiny", "--config.nosection.depth=4"], "no section 'nosection'"),
    (["config", "configs/shapes.py:layers=abc"], "shapes layers='abc': expected a positive integer"),
    (["config", "configs/shapes.py:heads=0"], "shapes heads=0"),
    (["config", "configs/zoo.py:2b,mesh=nosuch"], "mesh preset 'nosuch'"),
    (["config", "configs/zoo.py:nosuch"], "zoo model 'nosuch'"),
    (["config", "nope:x"], "config 'nope' not found"),
    (["train", "--config", "configs/shapes.py:layers=abc", "--workdir", "{tmp}/run"], "shapes layers='abc'"),
    (["train", "--config", "shapes:tiny", "--workdir", "{tmp}/run", "--config.model.dept=4"], "no field 'dept'"),
    (["train-tokenizer", "--config", "tokenizer_shapes:size=abc", "--workdir", "{tmp}/tok"],
     "tokenizer_shapes size='abc'"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_naming_it_with_status_2_and_writes_nothing(tmp_path, monkeypatch, capsys, argv,
                                                                            message):
    monkeypatch.chdir(tmp_path)
    fill = {"tmp": str(tmp_path)}
    assert cli.main([a.format(**fill) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"infinity-jax {argv[0]}: error: ") and message.format(**fill) in err, err
    assert os.listdir(tmp_path) == []


def test_version_and_help_list_what_runs(capsys):
    import infinity_jax
    from infinity_jax import bench
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"infinity-jax {infinity_jax.__version__}\n"
    assert cli.main(["--help"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")}
    assert all(name in lines["bench"] for name in bench.BENCHMARKS)  # generated from the registry
    assert "shapes" in lines["eval"] and "prefixes" in lines["eval"]
    assert cli.main(["bench", "--help"]) == 0
    assert "<attention|data|sample|train>" in capsys.readouterr().out
