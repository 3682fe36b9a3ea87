"""Tokenizers: same ids, padding, mask and truncation as transformers' T5/ByT5 tokenizers."""

from __future__ import annotations

import numpy as np
import pytest

from infinity_jax.text.tokenizers import ByteTokenizer, SentencePieceTokenizer, load_tokenizer

CORPUS = [
    "a photo of a cat sitting on a red sofa",
    "an oil painting of mountains at sunset, highly detailed",
    "two dogs playing in the snow",
    "a futuristic city skyline at night with neon lights",
    "close-up portrait of an old man with a grey beard",
    "a bowl of fruit: apples, bananas and grapes",
    "Café au lait, naïve résumé — 東京 タワー",
    "The quick brown fox jumps over the lazy dog 1234567890",
]
TEXTS = [
    "a cat",
    "  leading and   multiple  spaces ",
    "Café naïve 東京 ☃ emoji 🙂",
    "line\nbreak\ttab",
    "",
    "zzz qqq xyz",
    "A Photo OF a CAT!!",
    "ﬁ ligature ① full-width ＡＢＣ",
    "a photo of a cat sitting on a red sofa",
]
SPECIAL_TEXTS = [
    "</s> inside <pad> text",
    "a</s>b",
    "x <extra_id_0> y<extra_id_5>z",
    "<unk>",
    "  </s>  ",
    "<extra_id_99><extra_id_100>",
]


@pytest.fixture(scope="session")
def spiece(tmp_path_factory):
    """A tiny unigram spiece.model with T5's special ids (pad 0, EOS 1, unk 2, no BOS), trained in ~20 ms."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("spiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_prefix=str(folder / "spiece"),
        vocab_size=90,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    return str(folder)


def test_sentencepiece_ids_match_t5_tokenizer_and_raw_processor(spiece):
    transformers = pytest.importorskip("transformers")
    import sentencepiece as spm

    ours = load_tokenizer(spiece)
    assert isinstance(ours, SentencePieceTokenizer) and ours.vocab_size == 190
    hf = transformers.T5Tokenizer.from_pretrained(spiece, legacy=True)
    raw = spm.SentencePieceProcessor(model_file=f"{spiece}/spiece.model")
    for text in TEXTS:
        assert ours.encode(text) == raw.encode(text) + [1], text
        assert ours.encode(text) == hf(text)["input_ids"], text
    for text in SPECIAL_TEXTS:  # literal special tokens become their ids, as in transformers
        assert ours.encode(text) == hf(text)["input_ids"], text
    assert ours.encode("<extra_id_0>")[0] == hf.convert_tokens_to_ids("<extra_id_0>") == 189


def test_sentencepiece_batch_pads_masks_and_truncates_like_the_official_call(spiece):
    transformers = pytest.importorskip("transformers")
    hf = transformers.T5Tokenizer.from_pretrained(spiece, legacy=True)
    ours = SentencePieceTokenizer(f"{spiece}/spiece.model", max_length=12)
    ref = hf(TEXTS, max_length=12, padding="max_length", truncation=True, return_tensors="np")
    n_cut = sum(len(hf(t)["input_ids"]) > 12 for t in TEXTS)
    assert 0 < n_cut < len(TEXTS)
    with pytest.warns(UserWarning, match=rf"{n_cut} of 9 prompts exceed max_length=12 tokens"):
        ids, mask = ours(TEXTS)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert np.all(ids[mask.sum(1) == 12, -1] == 1)  # truncated rows still end in EOS


def test_byte_tokenizer_matches_byt5_tokenizer():
    transformers = pytest.importorskip("transformers")
    hf = transformers.ByT5Tokenizer()
    ours = ByteTokenizer(max_length=16)
    assert ours.vocab_size == len(hf) == 384
    for text in TEXTS:
        assert ours.encode(text)[:-1] == [b + 3 for b in text.encode()][:15]
        assert ours.encode(text) == hf(text, max_length=16, truncation=True)["input_ids"], text
    ref = hf(TEXTS, max_length=16, padding="max_length", truncation=True, return_tensors="np")
    with pytest.warns(UserWarning, match="exceed max_length=16"):
        ids, mask = ours(TEXTS)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))


def test_padding_to_a_shorter_length_and_errors(tmp_path):
    tok = ByteTokenizer(max_length=512)
    ids, mask = tok(["ab", ""], length=4)
    np.testing.assert_array_equal(ids, [[100, 101, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="has 4 tokens but length=3"):
        tok(["abc"], length=3)
    with pytest.raises(TypeError, match="single str"):
        tok("abc")
    with pytest.raises(ValueError, match="max_length=0"):
        ByteTokenizer(max_length=0)
    assert isinstance(load_tokenizer("bytes", 7), ByteTokenizer) and load_tokenizer(None).max_length == 512
    with pytest.raises(FileNotFoundError, match="no spiece.model"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="expected 'bytes'"):
        load_tokenizer(str(tmp_path / "missing.model"))
