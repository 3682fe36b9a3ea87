"""Text pretraining (text/pretrain.py): the context objective makes a random byte-T5 tell word
order apart, and `infinity-jax pretrain-text` writes a folder that TextEncoder.from_pretrained loads."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from infinity_jax import commands
from infinity_jax.data import shapes, sources
from infinity_jax.text import pretrain
from infinity_jax.text.encoder import TextEncoder
from infinity_jax.text.t5 import T5Config, T5Encoder, init_params
from infinity_jax.text.tokenizers import ByteTokenizer

CONFIG = T5Config.preset("tiny-byt5", d_model=64)
SWAPS = [
    ("a photo of a red circle and a blue square", "a photo of a blue circle and a red square"),
    ("a photo of a triangle left of a circle", "a photo of a circle left of a triangle"),
    ("a photo of a green square above a white circle", "a photo of a white square above a green circle"),
]


def _rows(params, texts):
    ids, mask = ByteTokenizer(max_length=64)(texts, length=64)
    feats = np.asarray(T5Encoder(CONFIG).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    return [f[np.asarray(m, bool)] for f, m in zip(feats, mask)]


def _chamfer(a, b):  # distance between two sets of feature rows (order inside each set ignored)
    d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    return 0.5 * (d.min(1).mean() + d.min(0).mean())


def order_sensitivity(params, captions) -> float:
    """Mean set distance of word-swapped caption pairs over the median distance of unrelated captions."""
    swapped = np.mean([_chamfer(*_rows(params, list(pair))) for pair in SWAPS])
    rows = _rows(params, captions[:20])
    unrelated = np.median([_chamfer(rows[i], rows[i + 10]) for i in range(10)])
    return float(swapped / unrelated)


@pytest.mark.slow  # ~30 s: keeps the suite inside its 10 minutes; CI runs it with -m slow
def test_context_pretraining_makes_features_depend_on_word_order():
    captions = list(dict.fromkeys(shapes.render(i, 0, 32)[1] for i in range(300)))
    random = nn.unbox(init_params(CONFIG, jax.random.key(0)))
    before = order_sensitivity(random, captions)
    params, report = pretrain.pretrain(captions, CONFIG, steps=120, batch_size=32, log_every=1000)
    after = order_sensitivity(params, captions)
    # A random T5 is near a bag of bytes: swapping two words barely moves its rows.
    assert before < 0.12, before
    assert after > 2 * before and after > 0.15, (before, after)
    assert report["steps"] == 120 and np.isfinite(report["context_loss"])


def test_pretrain_text_command_writes_a_loadable_folder(tmp_path):
    data = str(tmp_path / "data")
    sources.prepare("shapes", data, num_examples=30, image_size=32)
    out = str(tmp_path / "text_encoder")
    assert (
        commands.main(
            ["pretrain-text", "--data", data, "--out", out, "--steps", "3", "--d-model", "32", "--batch-size", "4"]
        )
        == 0
    )
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "pretrain.json"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
    assert json.load(open(os.path.join(out, "pretrain.json")))["steps"] == 3
    enc = TextEncoder.from_pretrained(out, tokenizer="bytes", max_length=32)
    assert enc.config.d_model == 32 and enc.config.vocab_size == 384
    feats, mask = enc(["a photo of a red circle"])
    assert feats.shape == (1, 32, 32) and np.isfinite(np.asarray(feats)).all()


def test_pretrain_refuses_empty_or_bad_settings():
    with pytest.raises(ValueError, match="no captions"):
        pretrain.pretrain([], CONFIG)
    with pytest.raises(ValueError, match="steps=0"):
        pretrain.pretrain(["a photo of a circle"], CONFIG, steps=0)
