"""Scale schedules against the official tables: `dynamic_resolution_h_w` and `h_div_w_templates` in
the official infinity/utils/dynamic_resolution.py (GitHub FoundationVision/Infinity, read at commit
4c27bbb54a9918847a2fe56b0fbe31a8523791a1), which the released models were trained and sampled with;
the parity fixtures' schedules come from the same table through the reference harness."""

import pytest

from infinity_jax import schedules as S
from tests.conftest import load_fixture


def test_templates_cover_official_ratios_and_inverses():
    assert S.H_DIV_W_TEMPLATES == (0.333, 0.4, 0.5, 0.571, 0.666, 0.75, 0.8, 1.0, 1.25, 1.333, 1.5, 1.75, 2.0, 2.5, 3.0)
    for r, hws in S.TEMPLATES.items():
        assert len(hws) == 13
        h, w = hws[-1]
        assert abs(h / w - r) < 0.01 * max(1, r)


@pytest.mark.parametrize(
    "pn,n,hw",
    [("0.06M", 7, (256, 256)), ("0.25M", 10, (512, 512)), ("0.60M", 12, (768, 768)), ("1M", 13, (1024, 1024))],
)
def test_square_budgets(pn, n, hw):
    s = S.official_schedule(1.0, pn)
    assert len(s) == n and S.image_size(s) == hw and all(t == 1 for t, _, _ in s)


def test_token_counts():
    assert S.num_tokens(S.official_schedule(1.0, "0.06M")) == 521
    assert S.num_tokens(S.official_schedule(1.0, "1M")) == 10521
    assert S.num_tokens(S.official_schedule(0.5, "0.06M")) == 451
    s = S.official_schedule(1.0, "0.06M")
    assert S.scale_offsets(s)[:4] == (0, 1, 5, 21) and S.scale_offsets(s)[-1] == 521


def test_official_video_t_column():
    s = S.official_schedule(2.0, "1M", video_t=True)
    assert [t for t, _, _ in s] == [1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15, 17, 21]
    assert s[-1] == (21, 90, 45)


@pytest.mark.parametrize("name", ["tiny", "tiny-wide"])
def test_matches_reference_fixture_schedule(name):
    ref = load_fixture(name)
    s = S.official_schedule(float(ref["meta/h_div_w"]), "0.06M")
    assert [list(x) for x in s] == ref["meta/schedule"].tolist()


def test_nearest_template():
    assert S.nearest_h_div_w(1.0) == 1.0
    assert S.nearest_h_div_w(0.52) == 0.5
    assert S.nearest_h_div_w(1.9) == 2.0
    assert S.nearest_h_div_w(10.0) == 3.0
    with pytest.raises(ValueError, match="h_div_w"):
        S.nearest_h_div_w(-1.0)


def test_custom_small_schedules():
    assert S.custom_schedule((64, 64), stride=8) == ((1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8))
    assert S.custom_schedule((128, 128), stride=16)[-1] == (1, 8, 8)
    assert S.custom_schedule((96, 96), stride=16) == ((1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 6, 6))
    assert S.parse_schedule("1x1,2x2,3x4") == ((1, 1, 1), (1, 2, 2), (1, 3, 4))


def test_invalid_schedules_raise_clear_errors():
    with pytest.raises(ValueError, match="not increasing"):
        S.validate([(1, 2, 2), (1, 1, 1)])
    with pytest.raises(ValueError, match="latent size"):
        S.validate([(1, 1, 1), (1, 4, 4)], latent_hw=(8, 8))
    with pytest.raises(ValueError, match="empty"):
        S.validate([])
    with pytest.raises(ValueError, match="multiple of the VAE stride"):
        S.custom_schedule((100, 100), stride=16)
    with pytest.raises(ValueError, match="pn="):
        S.official_schedule(1.0, "2M")
