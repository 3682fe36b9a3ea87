import os

import pytest

from infinity_jax import config_util


def test_load_by_name_and_path_with_overrides():
    a = config_util.load_config("infinity:tiny", ["model.depth=4", "--config.model.embed_dim=128"])
    b = config_util.load_config("configs/infinity.py:tiny")
    assert a.model.depth == 4 and a.model.embed_dim == 128
    assert b.model.depth == 2 and b.model.embed_dim == 64


def test_json_round_trip_keeps_tuples():
    cfg = config_util.load_config("bsq_vae:tiny")
    back = config_util.from_json(config_util.to_json(cfg))
    assert back.to_dict() == config_util.from_json(config_util.to_json(back)).to_dict()
    assert tuple(back.ch_mult) == tuple(cfg.ch_mult)


def test_bad_specs_and_overrides_raise_clear_errors():
    with pytest.raises(FileNotFoundError, match="nope"):
        config_util.load_config("nope:x")
    with pytest.raises(KeyError, match="no field 'dept'"):
        config_util.load_config("infinity:tiny", ["model.dept=4"])
    with pytest.raises(TypeError, match="model.depth is int"):
        config_util.load_config("infinity:tiny", ["model.depth='deep'"])
    with pytest.raises(ValueError, match="key=value"):
        config_util.load_config("infinity:tiny", ["model.depth"])


def test_config_arguments_name_the_key_and_value():
    with pytest.raises(
        config_util.ConfigError,
        match="config 'configs/shapes.py:layers=abc': shapes layers='abc': expected a positive integer",
    ):
        config_util.load_config("configs/shapes.py:layers=abc")
    with pytest.raises(config_util.ConfigError, match="tokenizer_shapes bits='x'"):
        config_util.load_config("tokenizer_shapes:bits=x")
    with pytest.raises(config_util.ConfigError, match="shapes width=0: expected a positive integer"):
        config_util.load_config("shapes:width=0")


def test_configs_load_from_any_working_directory(tmp_path, monkeypatch):
    """A bare name and a relative configs/x.py are the installed package's module wherever the command runs."""
    import infinity_jax.configs.infinity

    monkeypatch.chdir(tmp_path)
    assert config_util.load_config("configs/infinity.py:tiny").model.depth == 2
    assert config_util.load_config("infinity:tiny").model.depth == 2
    assert config_util.load_module("configs/infinity.py") is infinity_jax.configs.infinity
    sweep = config_util.load_module("configs/sweeps/shapes_tiny.py")
    assert sweep.__name__ == "infinity_jax.configs.sweeps.shapes_tiny"


def test_unknown_config_names_list_the_known_ones():
    names = config_util.config_names()
    assert {"infinity", "shapes", "zoo", "bsq_vae", "t5", "train_defaults"} <= set(names) and "sweeps" not in names
    with pytest.raises(config_util.ConfigNotFoundError, match=r"config 'nope' not found: .*\['bsq_vae', 'infinity'"):
        config_util.load_config("nope:x")
    with pytest.raises(FileNotFoundError, match=r"config 'configs/nope.py' not found: .*'zoo'\]"):
        config_util.load_config("configs/nope.py")


def test_one_argument_grammar_name_then_keys_and_flags():
    parse = config_util.parse_named_arg
    assert parse(
        "2b,scan,remat=full",
        "infinity",
        names=("infinity_2b",),
        aliases={"2b": "infinity_2b"},
        allowed=("scan", "remat"),
    ) == ("infinity_2b", {"scan": "1", "remat": "full"})
    assert parse("mesh=v4-32", "zoo", names=("infinity_2b",), default="infinity_2b", allowed=("mesh",)) == (
        "infinity_2b",
        {"mesh": "v4-32"},
    )
    assert parse("scan", "zoo", names=("infinity_2b",), default="infinity_2b", allowed=("scan",))[0] == "infinity_2b"
    assert parse(None, "t5", default="flan-t5-xl") == ("flan-t5-xl", {})
    with pytest.raises(config_util.ConfigError, match="zoo model '3b' \\(from '3b,scan'\\): expected one of"):
        parse("3b,scan", "zoo", names=("infinity_2b",), allowed=("scan",), kind="model")
    with pytest.raises(config_util.ConfigError, match="zoo:infinity_2b argument 'bogus=1': unknown keys \\['bogus'\\]"):
        parse("infinity_2b,bogus=1", "zoo", names=("infinity_2b",), allowed=("scan",))
    with pytest.raises(config_util.ConfigError, match="infinity:infinity_2b argument 'scan,nope'"):
        config_util.load_config("infinity:2b,scan,nope")
    with pytest.raises(config_util.ConfigError, match="t5 max_length='x': expected an integer"):
        config_util.load_config("t5:tiny-byt5,max_length=x")
    with pytest.raises(config_util.ConfigError, match="mesh argument None: expected a preset name first"):
        config_util.load_config("mesh_presets")


def test_configs_state_what_they_set_and_run_config_completes_the_rest():
    """Configs import no model or training code; run_config.load completes model / step / optim from the
    dataclasses before the overrides, so overrides still name every field."""
    import dataclasses

    from infinity_jax import run_config
    from infinity_jax.model.transformer import InfinityConfig
    from infinity_jax.train.optim import NO_DECAY_KEYS
    from infinity_jax.train.step import StepOptions

    raw = config_util.load_config("shapes:tiny")
    assert "mlp_ratio" not in raw.model and len(raw.step) == 0 and "no_decay_keys" not in raw.optim
    with pytest.raises(KeyError, match="no field 'mlp_ratio'"):
        config_util.load_config("shapes:tiny", ["model.mlp_ratio=2"])
    cfg = run_config.load("shapes:tiny", ["model.mlp_ratio=2", "step.cond_drop=0.0", "optim.no_decay_keys=()"])
    assert set(cfg.model) == {f.name for f in dataclasses.fields(InfinityConfig)}
    assert cfg.model.mlp_ratio == 2.0 and cfg.model.depth == raw.model.depth and cfg.model.scan_layers
    assert cfg.step.to_dict() == dict(dataclasses.asdict(StepOptions()), cond_drop=0.0)
    assert (
        cfg.optim.no_decay_keys == () and tuple(run_config.load("train_defaults").optim.no_decay_keys) == NO_DECAY_KEYS
    )
    raw_tiny = config_util.load_config("infinity:tiny").model
    assert set(raw_tiny) < set(dataclasses.asdict(InfinityConfig()))  # InfinityConfig's defaults are not restated
    assert run_config.load("tiny", module="infinity").model.to_dict() == dataclasses.asdict(
        InfinityConfig.from_dict(raw_tiny)
    )
    assert "depth" not in run_config.load("t5:flan-t5-xl").model  # a text encoder's model: T5 overrides, untouched


def test_config_modules_import_no_model_or_training_code():
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys\n"
        "import infinity_jax.configs as pkg\n"
        "mods = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('infinity_jax.model', 'infinity_jax.train', 'jax', "
        "'flax', 'optax')))\n"
        "assert len(mods) >= 11 and not bad, (mods, bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_pyproject_ships_every_package_and_configs_as_infinity_jax_configs():
    import tomllib

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        st = tomllib.load(f)["tool"]["setuptools"]
    assert st["package-dir"] == {"infinity_jax.configs": "configs"}
    want = set()  # every folder with an __init__.py, by its installed name
    for top, name in (("infinity_jax", "infinity_jax"), ("configs", "infinity_jax.configs")):
        for folder, dirs, files in os.walk(os.path.join(repo, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(folder, os.path.join(repo, top))
            if "__init__.py" in files:
                want.add(name if rel == "." else ".".join([name, *rel.split(os.sep)]))
    assert set(st["packages"]) == want


def test_an_installed_wheel_loads_configs_from_elsewhere(tmp_path):
    """A non-editable install (the wheel, unpacked as site-packages would hold it) resolves bare names, configs/x.py
    paths and a user's file importing infinity_jax.configs, with the working directory elsewhere (python -P)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside its sources
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "requirements-test.txt"):
        shutil.copy(os.path.join(repo, name), src / name)
    for name in ("infinity_jax", "configs"):
        shutil.copytree(os.path.join(repo, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("infinity_jax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    assert {
        "infinity_jax/configs/__init__.py",
        "infinity_jax/configs/zoo.py",
        "infinity_jax/configs/sweeps/shapes_tiny.py",
    } <= names and not any(n.startswith("configs/") for n in names)
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "my_exp.py").write_text(
        "from infinity_jax.configs import shapes\n\ndef get_config(arg=None):\n    return shapes.get_config(arg)\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import infinity_jax.configs\n"
        "from infinity_jax import config_util as c\n"
        "assert infinity_jax.configs.__file__.startswith(sys.argv[1]), infinity_jax.configs.__file__\n"
        "print(c.load_config('zoo:2b').model.depth, c.load_config('configs/zoo.py:layer12').model.depth,"
        " c.load_config('my_exp.py:tiny').model.depth)"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code, str(tmp_path / "site")], cwd=work, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.split() == ["32", "12", "2"], done.stderr[-2000:]


def test_config_command_prints_the_loaded_config(capsys):
    from infinity_jax import commands

    assert commands.main(["config", "infinity:tiny", "--config.model.depth=3", "--config.model.dtype=bfloat16"]) == 0
    cfg = config_util.from_json(capsys.readouterr().out)
    assert cfg.model.depth == 3 and cfg.model.embed_dim == 64 and cfg.model.dtype == "bfloat16"
    assert cfg.model.mlp_ratio == 4.0  # completed by run_config: InfinityConfig's default
