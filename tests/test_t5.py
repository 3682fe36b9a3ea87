"""The linen T5 encoder against transformers' PyTorch T5, weight loading, and the encode_text front end.

Tiny random Hugging Face checkpoints of both families are written to a temp folder in every
layout a model folder can have, loaded by both sides, and compared in fp32 (tolerance 1e-5).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from infinity_jax import parallel
from infinity_jax.config_util import load_config
from infinity_jax.convert.t5 import (
    find_weights,
    hf_to_params,
    load_t5,
    params_to_hf,
    read_encoder_state_dict,
    read_safetensors,
    save_t5,
)
from infinity_jax.text.encoder import TextEncoder, build_text_encoder, encode_tokens, length_buckets, pack_features
from infinity_jax.text.t5 import T5Config, abstract_params, relative_position_buckets
from infinity_jax.text.tokenizers import ByteTokenizer

TOL = 1e-5  # fp32 parity bound; measured ~2e-6
PROMPTS = [
    "a photo of a cat",
    "",
    "an oil painting of a lighthouse at dusk, waves crashing on the rocks",
    "Café 東京 🙂",
]
# The two families: T5 v1.1 / Flan-T5 (a full encoder-decoder checkpoint, sentencepiece vocab) and
# ByT5 (encoder-only checkpoint, 384 byte ids, deeper encoder than decoder).
FAMILIES = {
    "t5v11": dict(
        vocab_size=256,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=3,
        num_decoder_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    ),
    "byt5": dict(
        vocab_size=384,
        d_model=32,
        d_kv=8,
        d_ff=40,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    ),
}
SENTENCES = [
    "a photo of a cat sitting on a red sofa",
    "an oil painting of mountains at sunset, highly detailed",
    "two dogs playing in the snow",
    "a futuristic city skyline at night with neon lights",
    "close-up portrait of an old man with a grey beard",
    "a bowl of fruit: apples, bananas and grapes",
    "Café au lait, naïve résumé",
    "The quick brown fox jumps over the lazy dog 1234567890",
]


def _train_spiece(path: str) -> None:
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4),
        model_prefix=path[: -len(".model")],
        vocab_size=90,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )


@pytest.fixture(scope="session")
def hf(tmp_path_factory):
    """Per family: the torch model, and folders holding it as safetensors, .bin, and sharded safetensors."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("t5")
    out = {}
    for family, kw in FAMILIES.items():
        torch.manual_seed(0)
        hc = transformers.T5Config(**kw)
        cls = transformers.T5ForConditionalGeneration if family == "t5v11" else transformers.T5EncoderModel
        model = cls(hc).eval()
        for p in model.parameters():  # randomise the norms too, so a dropped/mis-mapped gain shows
            if p.ndim == 1:
                torch.nn.init.uniform_(p, 0.5, 1.5)
        folders = {k: str(root / f"{family}-{k}") for k in ("safetensors", "bin", "sharded")}
        model.save_pretrained(folders["safetensors"])
        model.save_pretrained(folders["sharded"], max_shard_size="20KB")
        os.makedirs(folders["bin"])
        shutil.copy(os.path.join(folders["safetensors"], "config.json"), folders["bin"])
        torch.save(model.state_dict(), os.path.join(folders["bin"], "pytorch_model.bin"))
        if family == "t5v11":
            _train_spiece(os.path.join(folders["safetensors"], "spiece.model"))
        encoder = model.encoder if family == "t5v11" else model
        out[family] = dict(model=encoder, folders=folders, hf_config=hc)
    return out


def _torch_features(model, ids, mask):
    import torch

    with torch.no_grad():
        return model(
            input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long),
            attention_mask=torch.as_tensor(np.asarray(mask), dtype=torch.long),
        ).last_hidden_state.numpy()


_forward = jax.jit(encode_tokens, static_argnums=0)


def test_relative_position_buckets_match_transformers():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    L = 600
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]
    for nb, md in [(32, 128), (8, 20), (32, 64), (16, 33)]:
        ref = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=nb, max_distance=md)
        np.testing.assert_array_equal(relative_position_buckets(L, L, nb, md), ref.numpy(), err_msg=f"{nb}/{md}")


@pytest.mark.parametrize("layout", ["safetensors", "bin", "sharded"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_encoder_matches_transformers_fp32(hf, family, layout):
    h = hf[family]
    folder = h["folders"][layout]
    if layout == "sharded":
        assert find_weights(folder).endswith("model.safetensors.index.json")
        assert len({v for v in json.load(open(find_weights(folder)))["weight_map"].values()}) > 1
    config, params = load_t5(folder)
    assert config.num_layers == FAMILIES[family]["num_layers"] and config.is_gated
    rng = np.random.RandomState(1)
    B, L = 3, 24
    ids = rng.randint(0, config.vocab_size, (B, L)).astype(np.int32)
    mask = np.arange(L)[None] < np.array([[L], [9], [1]])
    ref = _torch_features(h["model"], ids, mask)
    ours = np.asarray(_forward(config, params, ids, mask))
    err = np.abs(ours - ref)[mask].max()
    assert err < TOL, f"{family}/{layout}: max |ours - transformers| = {err:.2e}"
    assert np.all(ours[~mask] == 0)


def test_full_checkpoint_keeps_only_the_encoder(hf):
    folder = hf["t5v11"]["folders"]["safetensors"]
    sd = read_encoder_state_dict(folder)
    assert all(k.startswith("encoder.") or k == "shared.weight" for k in sd), sorted(sd)[:5]
    assert any(k.startswith("decoder.") for k in read_safetensors(os.path.join(folder, "model.safetensors")))
    config, params = load_t5(folder)
    back = params_to_hf(params, config)
    for k, v in back.items():  # exact round trip of every kept weight
        src = sd.get(k, sd.get("encoder.embed_tokens.weight") if k == "shared.weight" else None)
        np.testing.assert_array_equal(v, src, err_msg=k)


def test_weight_errors_name_the_file_and_key(hf, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere' does not exist"):
        load_t5(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(hf["byt5"]["folders"]["safetensors"], "config.json"), empty)
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_t5(str(empty))
    config, params = load_t5(hf["byt5"]["folders"]["safetensors"])
    sd = params_to_hf(params, config)
    bad = dict(sd, **{"encoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"SelfAttention\.q\.weight: got \(3, 3\), expected \(32, 32\)"):
        hf_to_params(bad, config)
    extra = dict(sd, **{"encoder.block.9.layer.0.layer_norm.weight": np.ones(32, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected keys.*\n.*block\.9"):
        hf_to_params(extra, config)
    deeper = T5Config(**{**config.to_dict(), "num_layers": 3})
    with pytest.raises(ValueError, match=r"missing keys.*\n(.*\n)*.*block\.2\."):
        hf_to_params(sd, deeper)


def test_bf16_safetensors_load_without_torch_reader(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = torch.randn(4, 5).to(torch.bfloat16)
    save_file({"x": t, "y": torch.arange(3, dtype=torch.int64)}, str(tmp_path / "a.safetensors"))
    got = read_safetensors(str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(got["x"], t.float().numpy())
    np.testing.assert_array_equal(got["y"], [0, 1, 2])


def test_saved_t5_loads_in_transformers_with_equal_features(tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    enc = TextEncoder.from_config("tiny-byt5", seed=3, cache_size=0)
    save_t5(str(tmp_path / "m"), enc.config, jax.tree.map(np.asarray, enc.params))
    model = transformers.T5EncoderModel.from_pretrained(str(tmp_path / "m")).eval()
    ids, mask = enc.tokenize(PROMPTS)
    ref = _torch_features(model, ids, mask)
    ours = np.asarray(enc.encode_tokens(ids, mask))
    assert np.abs(ours - ref)[mask].max() < TOL
    config, params = load_t5(str(tmp_path / "m"))
    assert config == enc.config
    jax.tree.map(np.testing.assert_array_equal, params, jax.tree.map(np.asarray, enc.params))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_encode_text_reproduces_the_official_text_pipeline(hf, family):
    """tokenizer(max_length, padding='max_length', truncation=True) -> last_hidden_state -> first len_i rows."""
    transformers = pytest.importorskip("transformers")
    h = hf[family]
    folder = h["folders"]["safetensors"]
    max_length = 40
    if family == "t5v11":
        tok = transformers.T5Tokenizer.from_pretrained(folder, legacy=True)
    else:
        tok = transformers.ByT5Tokenizer()
    prompts = PROMPTS + ["x " * 60]  # the last one is truncated
    t = tok(prompts, max_length=max_length, padding="max_length", truncation=True, return_tensors="np")
    ref = _torch_features(h["model"], t["input_ids"], t["attention_mask"])
    kv_ref = np.concatenate([f[:n] for f, n in zip(ref, t["attention_mask"].sum(1))])

    enc = TextEncoder.from_pretrained(folder, max_length=max_length, cache_size=0)
    assert type(enc.tokenizer).__name__ == ("SentencePieceTokenizer" if family == "t5v11" else "ByteTokenizer")
    n_cut = sum(len(tok(p)["input_ids"]) > max_length for p in prompts)
    assert n_cut >= 1
    with pytest.warns(UserWarning, match=f"{n_cut} of 5 prompts exceed max_length=40"):
        feats, mask = enc.encode_text(prompts)
    Lt = feats.shape[1]
    assert feats.shape == (5, Lt, 32) and feats.dtype == jnp.float32 and Lt == max_length
    np.testing.assert_array_equal(np.asarray(mask), t["attention_mask"][:, :Lt].astype(bool))
    with pytest.warns(UserWarning):
        ids, _ = enc.tokenize(prompts)
    np.testing.assert_array_equal(ids, t["input_ids"][:, :Lt])
    kv, lens, cu, lmax = pack_features(feats, mask)
    np.testing.assert_array_equal(lens, t["attention_mask"].sum(1))
    assert lmax == max_length and cu[-1] == kv_ref.shape[0]
    assert np.abs(kv - kv_ref).max() < TOL
    assert np.all(np.asarray(feats)[~np.asarray(mask)] == 0)


def test_length_buckets_change_nothing_but_shape():
    enc = TextEncoder.from_config("tiny-byt5", seed=0, max_length=100, cache_size=0)
    assert enc.buckets == (16, 32, 64, 100) and length_buckets(512) == (16, 32, 64, 128, 256, 512)
    alone, m1 = enc.encode_text(["a red cube"])
    with_long, m2 = enc.encode_text(["a red cube", "y" * 40])
    assert alone.shape[1] == 16 and with_long.shape[1] == 64
    n = int(m1.sum())
    assert n == 11 and int(m2[0].sum()) == n
    # equal up to fp32 rounding: the padded length changes the order of the softmax sums (measured
    # 1.5e-6 on features of size ~2 on one machine, 0 on another)
    assert np.abs(np.asarray(alone[0, :n]) - np.asarray(with_long[0, :n])).max() < 1e-5


def test_cache_serves_repeated_prompts_with_the_same_features():
    enc = TextEncoder.from_config("tiny-byt5", seed=0, cache_size=2)
    direct, dmask = enc.encode_text(["", "a", "b b"], cache=False)
    enc.encode_text(["", "a"])
    assert enc.cache_info() == {"hits": 0, "misses": 2, "size": 2, "max_size": 2}
    f, m = enc.encode_text(["a", "", "b b", ""])  # 'b b' misses, evicting the least recently used
    assert enc.cache_info()["hits"] == 3 and enc.cache_info()["misses"] == 3 and enc.cache_info()["size"] == 2
    assert "a" not in enc._cache and set(enc._cache) == {"", "b b"}
    np.testing.assert_array_equal(np.asarray(m), np.asarray(dmask)[[1, 0, 2, 0]])
    assert np.abs(np.asarray(f) - np.asarray(direct)[[1, 0, 2, 0]]).max() < 1e-6


def test_sharded_encoder_matches_unsharded_on_8_devices():
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    single = TextEncoder.from_config("tiny-byt5", seed=1, cache_size=0)
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = TextEncoder(single.config, single.params, single.tokenizer, mesh=mesh, rules="fsdp_tp", cache_size=0)
    specs = jax.tree.map(lambda a: a.sharding, sharded.params)
    assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(specs))
    attn = specs["block_0"]["layer_0"]["SelfAttention"]
    assert attn["q"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert attn["o"]["kernel"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert specs["block_1"]["layer_1"]["DenseReluDense"]["wo"]["kernel"].spec == jax.sharding.PartitionSpec(
        "tensor", "fsdp"
    )
    assert specs["shared"]["embedding"].spec == jax.sharding.PartitionSpec(None, "fsdp")
    prompts = [f"prompt number {i}" for i in range(8)]
    f1, m1 = single.encode_text(prompts)
    f8, m8 = sharded.encode_text(prompts)
    assert f8.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m8))
    assert np.abs(np.asarray(f1) - np.asarray(f8)).max() < TOL
    f3, _ = sharded.encode_text(prompts[:3])  # a batch that does not divide: padded, then cut
    assert np.abs(np.asarray(f3) - np.asarray(f1)[:3]).max() < TOL


def test_encoder_from_a_plain_config_dict_needs_no_files():
    cfg = dict(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)  # plain values
    boxed = jax.tree.leaves(abstract_params(T5Config(**cfg)), is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxed and all(isinstance(b, nn.Partitioned) and len(b.names) == b.value.ndim for b in boxed)
    enc = build_text_encoder({"model": cfg, "max_length": 32, "dtype": "bfloat16", "seed": 5})
    assert isinstance(enc.tokenizer, ByteTokenizer) and enc.config.dtype == "bfloat16" and enc.width == 64
    feats, mask = enc.encode_text(["a small demo prompt"])
    assert feats.shape == (1, 32, 64) and feats.dtype == jnp.float32 and int(mask.sum()) == 20
    ref = TextEncoder(T5Config(**cfg), enc.params, enc.tokenizer, cache_size=0).encode_text(["a small demo prompt"])[0]
    rel = np.abs(np.asarray(feats) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
    assert rel < 5e-2, f"bf16 compute vs fp32: relative error {rel:.3f}"


def test_config_reads_hf_json_and_rejects_bad_values(tmp_path):
    hf_json = {
        "model_type": "t5",
        "d_model": 64,
        "d_kv": 16,
        "d_ff": 96,
        "num_layers": 2,
        "num_heads": 4,
        "vocab_size": 384,
        "feed_forward_proj": "gated-gelu",
        "num_decoder_layers": 1,
        "torch_dtype": "float32",
    }
    (tmp_path / "config.json").write_text(json.dumps(hf_json))
    c = T5Config.from_hf(str(tmp_path), dtype="bfloat16")
    assert (c.d_model, c.num_layers, c.activation, c.is_gated, c.dtype) == (64, 2, "gelu_new", True, "bfloat16")
    assert T5Config.from_dict({"feed_forward_proj": "relu"}).activation == "relu"
    with pytest.raises(ValueError, match="feed_forward_proj='gated-foo'"):
        T5Config(feed_forward_proj="gated-foo")
    with pytest.raises(ValueError, match="model_type='umt5'"):
        T5Config.from_dict({"model_type": "umt5"})
    with pytest.raises(ValueError, match="d_model=0"):
        T5Config(d_model=0)
    with pytest.raises(ValueError, match="preset 'nope'"):
        T5Config.preset("nope")
    c = load_config("t5:tiny-byt5,cache_size=3,buckets=16/128")
    enc = build_text_encoder(c)
    assert (enc.cache_size, enc.buckets, enc.config.d_model, enc.tokenizer.max_length) == (3, (16, 128), 64, 128)
    with pytest.raises(ValueError, match="vocab_size=256"):
        TextEncoder.from_config({**hf_json, "vocab_size": 256}, tokenizer="bytes")
