"""Precomputed latents (data/latent_cache.py): the cache holds the encoder output of every example of
one epoch, batches visit each example once per epoch and resume exactly, a cache built from other
settings is refused, and the trainer's data (trainer.build_cached_data) reads the frozen VAE's latents
from it."""

import json
import os

import numpy as np
import pytest

from infinity_jax import config_util, runs
from infinity_jax.data import latent_cache, pipeline, sources
from infinity_jax.text.tokenizers import ByteTokenizer
from infinity_jax.train import trainer


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    sources.prepare("shapes", str(out), num_examples=40, image_size=32)
    return str(out)


def _encode(images):  # a stand-in encoder: 4x4 mean pool -> (B, 8, 8, 3)
    x = images.astype(np.float32).reshape(len(images), 8, 4, 8, 4, 3)
    return x.mean((2, 4))


def test_cache_holds_one_epoch_of_encoded_images_and_tokens(shapes_data, tmp_path):
    dcfg = pipeline.DataConfig(path=shapes_data, batch_size=8, image_size=32, short_cap_prob=0.0, worker_count=0)
    tok = ByteTokenizer(max_length=64)
    arrays = latent_cache.ensure(str(tmp_path / "c"), dcfg, _encode, tok, {"vae": "pool"}, shard=(0, 1))
    assert arrays["latent"].shape == (40, 8, 8, 3) and arrays["tokens"].shape[0] == 40
    one_epoch = pipeline.DataConfig(
        path=shapes_data, batch_size=8, image_size=32, short_cap_prob=0.0, worker_count=0, shuffle=False, num_epochs=1
    )
    batches = list(pipeline.make_dataset(one_epoch, tokenizer=tok, shard=(0, 1)))
    np.testing.assert_allclose(arrays["latent"], np.concatenate([_encode(b["image"]) for b in batches]))
    np.testing.assert_array_equal(arrays["tokens"], np.concatenate([b["tokens"] for b in batches]))
    # a second ensure loads, it does not rebuild (the encoder is not called)
    again = latent_cache.ensure(str(tmp_path / "c"), dcfg, None, tok, {"vae": "pool"}, shard=(0, 1))
    np.testing.assert_array_equal(again["latent"], arrays["latent"])
    assert [p for p in os.listdir(tmp_path / "c") if p.startswith(".")] == []
    with pytest.raises(ValueError, match="vae: cache 'pool', now 'other'"):
        latent_cache.load(str(tmp_path / "c"), {"vae": "other"}, (0, 1))


def test_shards_split_the_examples_between_hosts(shapes_data, tmp_path):
    dcfg = pipeline.DataConfig(path=shapes_data, batch_size=4, image_size=32, short_cap_prob=0.0, worker_count=0)
    tok = ByteTokenizer(max_length=64)
    a = latent_cache.ensure(str(tmp_path), dcfg, _encode, tok, {}, shard=(0, 2))
    b = latent_cache.ensure(str(tmp_path), dcfg, _encode, tok, {}, shard=(1, 2))
    assert len(a["latent"]) == len(b["latent"]) == 20
    rows = {r.tobytes() for r in a["latent"]} | {r.tobytes() for r in b["latent"]}
    assert len(rows) == 40  # disjoint, together the whole epoch
    assert sorted(os.listdir(tmp_path)) == ["shard-0-of-2", "shard-1-of-2"]


def test_batches_cover_each_epoch_and_resume_exactly():
    arrays = {
        "latent": np.arange(10, dtype=np.float32)[:, None],
        "tokens": np.arange(10)[:, None],
        "token_mask": np.ones((10, 1), bool),
    }
    it = latent_cache.CachedBatches(arrays, batch_size=3, seed=5)
    epoch0 = [next(it)["tokens"][:, 0] for _ in range(3)]
    seen = np.concatenate(epoch0)
    assert len(set(seen.tolist())) == 9  # 3 batches of 3 distinct examples; one left out this epoch
    state = it.get_state()
    after = [next(it)["latent"] for _ in range(4)]
    resumed = latent_cache.CachedBatches(arrays, batch_size=3, seed=5)
    resumed.set_state(json.loads(json.dumps(state)))
    for want in after:
        np.testing.assert_array_equal(next(resumed)["latent"], want)
    with pytest.raises(ValueError, match="batch_size=11"):
        latent_cache.CachedBatches(arrays, batch_size=11, seed=0)


def test_settings_drawn_per_epoch_are_refused():
    with pytest.raises(ValueError, match="random_flip"):
        latent_cache.check_cacheable(pipeline.DataConfig(path="x", batch_size=1, random_flip=True))
    with pytest.raises(ValueError, match="short_cap_prob=0.5"):
        latent_cache.check_cacheable(pipeline.DataConfig(path="x", batch_size=1, short_cap_prob=0.5))


def test_trainer_data_reads_the_frozen_vae_encoding_from_the_cache(shapes_data, tmp_path):
    """trainer.build_cached_data (what `infinity-jax train` uses with data.latent_cache): the cache holds
    the frozen VAE's encoding of the pipeline's images, and another VAE cannot reuse it."""
    cache = str(tmp_path / "cache")
    cfg = config_util.load_config("shapes:tiny", [f"data.path={shapes_data!r}", f"data.latent_cache={cache!r}"])
    vae, vae_cfg, vae_params = runs.build_vae(cfg)
    _, _, tokenizer = runs.build_text(cfg)
    batches = trainer.build_cached_data(cfg, vae, vae_cfg, vae_params, tokenizer)
    batch = next(batches)
    assert batch["latent"].shape == (8, 8, 8, 8) and batch["tokens"].shape[0] == 8
    arrays = latent_cache.load(
        cache, json.load(open(os.path.join(cache, "shard-0-of-1", "meta.json")))["fingerprint"], (0, 1)
    )
    first = next(
        iter(
            pipeline.make_dataset(
                pipeline.DataConfig(
                    path=shapes_data, batch_size=8, image_size=32, short_cap_prob=0.0, worker_count=0, shuffle=False
                ),
                shard=(0, 1),
            )
        )
    )
    want = vae.apply({"params": vae_params}, pipeline.to_float(first["image"]), method="encode")
    np.testing.assert_allclose(arrays["latent"][:8], np.asarray(want), atol=1e-5)
    # another VAE (other random weights) cannot reuse this cache
    other = config_util.apply_overrides(cfg, ["seed=3"])
    vae, vae_cfg, vae_params = runs.build_vae(other)
    with pytest.raises(ValueError, match="vae_params"):
        trainer.build_cached_data(other, vae, vae_cfg, vae_params, tokenizer)
