"""grain pipeline: determinism, exact resume (orbax), aspect buckets, per-host shards, captions, bad images."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")
grain = pytest.importorskip("grain")

from infinity_jax import schedules  # noqa: E402
from infinity_jax.data import pipeline, shapes, sources  # noqa: E402
from tests.test_data_sources import write_official  # noqa: E402

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def shapes_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return sources.prepare("shapes", str(out), num_examples=48, image_size=64, seed=1, progress=False)


@pytest.fixture(scope="module")
def official_path(tmp_path_factory):
    """18 images in three templates (0.5, 1.0, 1.5), 6 each; image 4 is corrupt but kept."""
    root = tmp_path_factory.mktemp("official")
    ds = write_official(root / "src", corrupt=(4,), no_text=(13,))
    return sources.prepare("infinity_jsonl", str(root / "out"), source=ds, verify="none", progress=False)


def cfg(path, **kw):
    base = dict(path=path, batch_size=4, image_size=64, worker_count=0)
    return pipeline.DataConfig(**{**base, **kw})


def take(c, n, shard=(0, 1), tokenizer=None):
    it = iter(pipeline.make_dataset(c, tokenizer=tokenizer, shard=shard))
    return [next(it) for _ in range(n)], it


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_same_batches_other_seed_other_order(shapes_path):
    a, _ = take(cfg(shapes_path), 5)
    b, _ = take(cfg(shapes_path), 5)
    c, _ = take(cfg(shapes_path, seed=1), 5)
    assert all(same(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
    x = a[0]
    assert x["image"].shape == (4, 64, 64, 3) and x["image"].dtype == np.uint8
    assert x["caption"].shape == (4,) and x["index"].dtype == np.int64
    assert np.all(x["h_div_w_template"] == 1.0)
    # the shapes spec travels with each example and matches its pixels
    for img, cap, spec, i in zip(x["image"], x["caption"], x["spec"], x["index"]):
        want_img, want_cap, want_spec = shapes.render(int(i), seed=1, size=64)
        assert np.array_equal(img, want_img) and cap == want_cap and json.loads(spec) == want_spec


def test_an_epoch_visits_every_record_once_and_epochs_reshuffle(shapes_path):
    batches, _ = take(cfg(shapes_path, batch_size=8), 12)  # 6 batches per epoch
    e0 = np.concatenate([b["index"] for b in batches[:6]])
    e1 = np.concatenate([b["index"] for b in batches[6:]])
    assert sorted(e0) == sorted(e1) == list(range(48))
    assert not np.array_equal(e0, e1)
    threaded, _ = take(cfg(shapes_path, batch_size=8, num_threads=4), 12)  # thread count changes nothing
    assert all(same(x, y) for x, y in zip(batches, threaded))
    ordered, _ = take(cfg(shapes_path, batch_size=8, shuffle=False), 6)
    assert np.concatenate([b["index"] for b in ordered]).tolist() == list(range(48))
    finite = list(pipeline.make_dataset(cfg(shapes_path, batch_size=8, num_epochs=2), shard=(0, 1)))
    assert len(finite) == 12 and pipeline.batches_per_epoch(cfg(shapes_path, batch_size=8), shard=(0, 1)) == 6


def test_resume_after_k_batches_gives_batch_k_plus_1_through_orbax(shapes_path, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    c = cfg(shapes_path, random_flip=True, short_cap_prob=0.5)
    want, _ = take(c, 15)  # crosses the epoch boundary at 12
    k = 10
    it = iter(pipeline.make_dataset(c, shard=(0, 1)))
    for _ in range(k):
        next(it)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",))
    mngr.save(k, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    fresh = iter(pipeline.make_dataset(c, shard=(0, 1)))
    ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",)).restore(
        k, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
    )
    for j in range(k, 15):
        assert same(next(fresh), want[j]), j
    # or without the saved state: skip k batches of the plan
    skipped = iter(pipeline.make_dataset(c, shard=(0, 1), start_batch=k))
    assert same(next(skipped), want[k])


def test_worker_processes_give_the_same_batches_and_resume(shapes_path):
    c = cfg(shapes_path, random_flip=True)
    want, _ = take(c, 6)
    it = iter(pipeline.make_dataset(dataclasses.replace(c, worker_count=2), shard=(0, 1)))
    got = [next(it) for _ in range(4)]
    state = it.get_state()
    it.close()
    assert all(same(x, y) for x, y in zip(got, want))
    it2 = iter(pipeline.make_dataset(dataclasses.replace(c, worker_count=2), shard=(0, 1)))
    it2.set_state(state)
    assert same(next(it2), want[4]) and same(next(it2), want[5])
    it2.close()


def test_two_hosts_get_disjoint_shards_that_cover_the_data_with_one_template_per_step(official_path):
    c = cfg(official_path, image_size=None, batch_size=2, pn="0.06M")
    # 3 templates x 6 records, global batch 2x2=4: one global batch per template per epoch
    h0, _ = take(c, 3, shard=(0, 2))
    h1, _ = take(c, 3, shard=(1, 2))
    i0 = np.concatenate([b["index"] for b in h0])
    i1 = np.concatenate([b["index"] for b in h1])
    assert not set(i0) & set(i1)
    one, _ = take(dataclasses.replace(c, batch_size=4), 3, shard=(0, 1))
    assert set(i0) | set(i1) == set(np.concatenate([b["index"] for b in one]))
    tmpl = sources.record_h_div_w(*sources.open_split(official_path))
    for a, b in zip(h0, h1):
        t = a["h_div_w_template"][0]
        assert t == b["h_div_w_template"][0] and np.all(a["h_div_w_template"] == t)
        assert np.all(tmpl[a["index"]] == t) and np.all(tmpl[b["index"]] == t)
        H, W = schedules.image_size(schedules.official_schedule(float(t), "0.06M"))
        assert a["image"].shape == b["image"].shape == (2, H, W, 3)
    assert sorted({float(b["h_div_w_template"][0]) for b in h0}) == [0.5, 1.0, 1.5]


def test_a_corrupt_image_is_counted_and_replaced_and_training_goes_on(official_path, caplog):
    c = cfg(official_path, image_size=32, batch_size=18, shuffle=False, log_every=1)
    with caplog.at_level(logging.WARNING):
        (b,), _ = take(c, 1)
    assert b["image"].shape == (18, 32, 32, 3)
    src, _ = sources.open_split(official_path)
    bad = [i for i in range(len(src)) if src[i]["source"].decode().endswith("/4.jpg")]
    assert len(bad) == 1 and bad[0] not in b["index"]
    assert len(set(b["index"].tolist())) == 17  # one example doubled in the corrupt one's place
    assert "undecodable" in caplog.text and f"record {bad[0]}" in caplog.text


def test_short_caption_probability_and_official_dash_rule(official_path):
    longs, _ = take(cfg(official_path, batch_size=17, short_cap_prob=0.0), 1)
    shorts, _ = take(cfg(official_path, batch_size=17, short_cap_prob=1.0), 1)
    src, _ = sources.open_split(official_path)
    for lb, sb in zip(longs, shorts):
        for i, lc, sc in zip(lb["index"], lb["caption"], sb["caption"]):
            rec = src[int(i)]
            long, short = rec["long_caption"].decode(), rec["text"].decode()
            assert lc == long
            # 'short N--tag' loses its '--tag'; no short caption -> the long one
            assert sc == (short.split("--")[0] if short else long)


def test_choose_caption_dynamic_length_rule():
    long = "One two three. Four five. Six seven. Eight."
    rng = np.random.default_rng(0)
    picks = {pipeline.choose_caption(long, "", "caption-x", rng, 0.3, True) for _ in range(200)}
    # short = first 2 sentences (first sentence < 15 words); otherwise 3 or 4 sentences, rejoined
    # with '.' as the official code does (so the final period goes)
    assert picks == {"One two three. Four five", "One two three. Four five. Six seven", long[:-1]}
    # user prompts are never cut, and the plain rule only switches when a short caption exists
    assert pipeline.choose_caption(long, "", "user_prompt", rng, 1.0, True) == long
    assert pipeline.choose_caption(long, "", "", rng, 1.0, False) == long
    assert pipeline.choose_caption(long, "s--x", "", rng, 1.0, False) == "s"


def _tokenize(captions):
    ids = np.zeros((len(captions), 16), np.int32)
    for r, c in enumerate(captions):
        b = list(c.encode())[:16]
        ids[r, : len(b)] = b
    return ids, (ids > 0).astype(np.int32)


def test_tokenizer_ids_and_float_images(shapes_path):
    (plain,), _ = take(cfg(shapes_path, batch_size=16, shuffle=False), 1)
    (b,), _ = take(cfg(shapes_path, batch_size=16, shuffle=False, image_dtype="float32"), 1, tokenizer=_tokenize)
    assert b["image"].dtype == np.float32 and b["image"].min() >= -1 and b["image"].max() <= 1
    assert np.array_equal(b["image"], pipeline.to_float(plain["image"]))
    assert b["tokens"].shape == b["token_mask"].shape == (16, 16)
    assert bytes(b["tokens"][0][b["token_mask"][0] > 0].astype(np.uint8)).decode() == b["caption"][0][:16]


def test_random_flip_mirrors_images_and_position_captions(shapes_path):
    (plain,), _ = take(cfg(shapes_path, batch_size=48, shuffle=False), 1)
    (flip,), _ = take(cfg(shapes_path, batch_size=48, shuffle=False, random_flip=True), 1)
    flipped = 0
    for k in range(48):
        if np.array_equal(flip["image"][k], plain["image"][k][:, ::-1]) and not np.array_equal(
            plain["image"][k], plain["image"][k][:, ::-1]
        ):
            flipped += 1
            spec = json.loads(flip["spec"][k])
            assert spec == shapes.flip_spec(json.loads(plain["spec"][k])) and flip["caption"][k] == spec["caption"]
        else:
            assert np.array_equal(flip["image"][k], plain["image"][k]) and flip["caption"][k] == plain["caption"][k]
    assert 10 <= flipped <= 38


def test_decode_resize_crop_covers_and_centre_crops():
    # 40x120 image: left third red, middle green, right third blue -> a square crop is all green
    img = np.zeros((40, 120, 3), np.uint8)
    img[:, :40, 0] = img[:, 40:80, 1] = img[:, 80:, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    out = pipeline.decode_resize_crop(buf.getvalue(), (20, 20))
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert np.abs(out[:, 2:-2].astype(int) - [0, 255, 0]).max() <= 2
    wide = pipeline.decode_resize_crop(buf.getvalue(), (16, 48))  # same aspect: the whole image
    assert wide.shape == (16, 48, 3) and wide[8, 2, 0] > 200 and wide[8, 45, 2] > 200
    big = Image.fromarray(np.tile(img, (8, 8, 1)))  # 320x960 JPEG decoded at reduced DCT scale
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=95)
    fast = pipeline.decode_resize_crop(buf.getvalue(), (40, 120), fast=True)
    slow = pipeline.decode_resize_crop(buf.getvalue(), (40, 120), fast=False)
    assert fast.shape == slow.shape == (40, 120, 3)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 8


def test_clear_errors_for_missing_data_bad_config_and_too_few_examples(shapes_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipeline.make_dataset(cfg(str(tmp_path / "none")), shard=(0, 1))
    with pytest.raises(ValueError, match="global batch of 64x1"):
        pipeline.make_dataset(cfg(shapes_path, batch_size=64), shard=(0, 1))
    with pytest.raises(ValueError, match="pn="):
        pipeline.make_dataset(cfg(shapes_path, image_size=None, pn="2M"), shard=(0, 1))
    with pytest.raises(ValueError, match="shard="):
        pipeline.make_dataset(cfg(shapes_path), shard=(2, 2))
    with pytest.raises(ValueError, match="unknown data config keys"):
        pipeline.DataConfig.from_dict({"path": "x", "batch_size": 1, "bogus": 1})


def test_bench_data_prints_a_throughput_table(capsys):
    from infinity_jax.commands import main

    assert (
        main(
            [
                "bench",
                "data",
                "--num-images",
                "8",
                "--batch-size",
                "4",
                "--batches",
                "2",
                "--warmup",
                "1",
                "--workers",
                "0",
                "--image-size",
                "64",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    row = out.strip().splitlines()[-1].split()
    assert "images/s" in out and row[0] == "0" and float(row[2]) > 0
