"""Bad command lines, one table: `infinity-jax <argv>` exits 2 with exactly one line on stderr that names the
bad value, prints nothing on stdout and writes nothing (run in-process through commands.main, from an empty folder)."""

from __future__ import annotations

import os

import pytest

from infinity_jax import commands

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
    # bench: a bad value of a benchmark's option (an unknown benchmark: test_version_and_help_list_what_runs)
    (["bench", "data", "--workers", "0,x"], "--workers '0,x': expected comma-separated integers"),
    (["bench", "train", "--tensor", "3"], "tensor 3 x fsdp 1: the mesh does not divide the"),
    (["bench", "train", "--memory", "--profile", "{tmp}/p"], "--profile records running steps; --memory runs none"),
    # config specs and overrides, as every command loads them (config: the launchers' local check)
    (["config", "shapes:tiny", "--config.model.dept=4"], "no field 'dept' in model"),
    (["config", "shapes:tiny", "--config.model.depth='deep'"], "model.depth is int"),
    (["config", "shapes:tiny", "--config.nosection.depth=4"], "no section 'nosection'"),
    (["config", "configs/shapes.py:layers=abc"], "shapes layers='abc': expected a positive integer"),
    (["config", "configs/shapes.py:heads=0"], "shapes heads=0"),
    (["config", "configs/zoo.py:2b,mesh=nosuch"], "mesh preset 'nosuch'"),
    (["config", "configs/zoo.py:nosuch"], "zoo model 'nosuch'"),
    (["config", "nope:x"], "config 'nope' not found"),
    (["config"], "expected a config spec"),
    (["train", "--config", "configs/shapes.py:layers=abc", "--workdir", "{tmp}/run"], "shapes layers='abc'"),
    (["train", "--config", "shapes:tiny", "--workdir", "{tmp}/run", "--config.model.dept=4"], "no field 'dept'"),
    (
        ["train-tokenizer", "--config", "tokenizer_shapes:size=abc", "--workdir", "{tmp}/tok"],
        "tokenizer_shapes size='abc'",
    ),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_naming_it_with_status_2_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    fill = {"tmp": str(tmp_path)}
    assert commands.main([a.format(**fill) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    command = " ".join(commands.resolve(argv)[0])  # e.g. `bench train`: a group's command names its subcommand
    assert err.startswith(f"infinity-jax {command}: error: ") and message.format(**fill) in err, err
    assert os.listdir(tmp_path) == []


def test_version_and_help_list_what_runs(capsys):
    import infinity_jax

    assert commands.main(["--version"]) == 0
    assert capsys.readouterr().out == f"infinity-jax {infinity_jax.__version__}\n"
    benchmarks = sorted(commands.COMMANDS["bench"])  # the help is generated from the registry
    assert benchmarks == ["attention", "data", "sample", "train"]
    assert commands.main(["--help"]) == 0
    names = [ln.strip().split("  ")[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    assert [n for n in names if n.startswith("bench ")] == [f"bench {b}" for b in benchmarks]
    assert "eval shapes" in names and "eval prefixes" in names
    assert commands.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: infinity-jax bench <command>")
    assert [ln.split()[0] for ln in out.splitlines() if ln.startswith("  ")] == benchmarks
    # an unknown benchmark names the registered ones (exit 2, nothing on stdout)
    assert commands.main(["bench", "nosuch"]) == 2
    out, err = capsys.readouterr()
    assert (
        out == ""
        and f"unknown command 'nosuch' for `infinity-jax bench`: expected one of {', '.join(benchmarks)}"
        in err.splitlines()[0]
    )
