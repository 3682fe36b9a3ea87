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
