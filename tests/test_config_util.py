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
    with pytest.raises(config_util.ConfigError, match="config 'configs/shapes.py:layers=abc': shapes layers='abc': "
                                                      "expected a positive integer"):
        config_util.load_config("configs/shapes.py:layers=abc")
    with pytest.raises(config_util.ConfigError, match="tokenizer_shapes bits='x'"):
        config_util.load_config("tokenizer_shapes:bits=x")
    with pytest.raises(config_util.ConfigError, match="shapes width=0: expected a positive integer"):
        config_util.load_config("shapes:width=0")


def test_configs_load_from_any_working_directory(tmp_path, monkeypatch):
    """A relative configs/x.py is this checkout's file wherever the command runs."""
    monkeypatch.chdir(tmp_path)
    assert config_util.load_config("configs/infinity.py:tiny").model.depth == 2


def test_config_files_import_configs_without_the_checkout_on_sys_path(tmp_path):
    """Console scripts do not put the working directory on sys.path (python -P runs the same way): the loader
    makes `from configs import ...` work, for files in configs/ and for a user's own file elsewhere."""
    import subprocess
    import sys
    (tmp_path / "my_exp.py").write_text("from configs import shapes\n\n"
                                        "def get_config(arg=None):\n    return shapes.get_config('tiny')\n")
    code = ("import sys; from infinity_jax import config_util as c\n"
            "sys.path[:] = [p for p in sys.path if p not in ('', sys.argv[2])]  # as an installed console script\n"
            "print(c.load_config(sys.argv[1]).model.depth, c.load_config('configs/zoo.py:layer12').model.depth)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-P", "-c", code, str(tmp_path / "my_exp.py"), repo], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["2", "12"], done.stderr[-2000:]


def test_config_command_prints_the_loaded_config(capsys):
    from infinity_jax import cli
    assert cli.main(["config", "infinity:tiny", "--config.model.depth=3"]) == 0
    cfg = config_util.from_json(capsys.readouterr().out)
    assert cfg.model.depth == 3 and cfg.model.embed_dim == 64
