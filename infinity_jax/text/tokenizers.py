"""Text tokenizers for the T5 encoder, with the official pipeline's batching rules.

The official trainer and sampler call the Hugging Face tokenizer as
`tok(captions, max_length=512, padding='max_length', truncation=True)`: every caption gets EOS
appended; one longer than `max_length` is cut to `max_length - 1` pieces plus EOS; rows are
right-padded with the pad id and `attention_mask` is 1 on the tokens (EOS included).
`Tokenizer.__call__` does exactly that (and warns when it truncates), padding to `length`
(by default `max_length`; the encoder front end pads to a shorter bucket, which is equivalent
for the features of the valid tokens).

Two schemes, both with T5's special ids (pad 0, EOS 1, unknown 2):
  SentencePieceTokenizer  a `spiece.model` (Flan-T5, T5, mT5), via the `sentencepiece` package.
                          The literal strings '<pad>', '</s>', '<unk>' and '<extra_id_N>' in a
                          caption become their special ids, as in transformers' T5Tokenizer.
  ByteTokenizer           ByT5: id = UTF-8 byte + 3; no file needed. Special-token strings in the
                          text stay plain bytes (transformers' ByT5Tokenizer maps them to special
                          ids and strips spaces around some; captions do not contain them).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Sequence

import numpy as np

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_MAX_LENGTH = 512  # the official `tlen`


class Tokenizer:
    """Base: subclasses turn one string into piece ids (no EOS); this class batches them.

    Attributes: vocab_size (ids are in [0, vocab_size)), max_length, pad_id, eos_id.
    """

    pad_id: int = PAD_ID
    eos_id: int = EOS_ID
    vocab_size: int

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH):
        if max_length < 1:
            raise ValueError(f"tokenizer max_length={max_length}: expected >= 1 (EOS needs one slot)")
        self.max_length = int(max_length)

    def pieces(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Ids of one string, EOS appended, truncated to max_length (EOS kept last), unpadded."""
        return self._encode(text)[0]

    def _encode(self, text: str) -> tuple[list[int], bool]:
        if not isinstance(text, str):
            raise TypeError(f"tokenizer: expected a str prompt, got {type(text).__name__}")
        ids = self.pieces(text)
        return ids[: self.max_length - 1] + [self.eos_id], len(ids) >= self.max_length

    def encode_batch(self, prompts: Sequence[str]) -> list[list[int]]:
        """encode() of each prompt; warns (once per call) when any was truncated."""
        if isinstance(prompts, str):
            raise TypeError("tokenizer: expected a list of prompts, got a single str (wrap it in a list)")
        encoded = [self._encode(p) for p in prompts]
        cut = sum(t for _, t in encoded)
        if cut:
            warnings.warn(
                f"{cut} of {len(encoded)} prompts exceed max_length={self.max_length} tokens and were "
                "truncated (as the official pipeline does)",
                stacklevel=3,
            )
        return [r for r, _ in encoded]

    def pad(self, rows: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
        """Right-pads id lists to (ids (B, length) int32, mask (B, length) bool)."""
        longest = max((len(r) for r in rows), default=0)
        if longest > length:
            raise ValueError(f"tokenizer: a prompt has {longest} tokens but length={length} was asked")
        ids = np.full((len(rows), length), self.pad_id, np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = True
        return ids, mask

    def __call__(self, prompts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """prompts: B strings -> (ids (B, length) int32, mask (B, length) bool); length defaults to max_length.

        The official `padding='max_length', truncation=True` call: over-long prompts are truncated
        (with a warning); a `length` below the longest encoded prompt is an error.
        """
        return self.pad(self.encode_batch(prompts), self.max_length if length is None else int(length))


class ByteTokenizer(Tokenizer):
    """ByT5's scheme: UTF-8 bytes shifted by 3 (0 pad, 1 EOS, 2 unknown); vocab 384 with ByT5's 125 sentinels."""

    OFFSET = 3

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH, extra_ids: int = 125):
        super().__init__(max_length)
        self.vocab_size = 256 + self.OFFSET + extra_ids

    def pieces(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]


class SentencePieceTokenizer(Tokenizer):
    """A T5 `spiece.model` (sentencepiece unigram), with `extra_ids` sentinels after its pieces.

    Sentinel `<extra_id_N>` has id `pieces + extra_ids - 1 - N` (T5's reversed order).
    """

    def __init__(self, model_file: str, max_length: int = DEFAULT_MAX_LENGTH, extra_ids: int = 100):
        super().__init__(max_length)
        try:
            import sentencepiece as spm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("a spiece.model tokenizer needs `pip install sentencepiece`") from e
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"sentencepiece model {model_file!r} does not exist")
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        got = {"<pad>": self.sp.piece_to_id("<pad>"), "</s>": self.sp.piece_to_id("</s>"), "<unk>": self.sp.unk_id()}
        if got != {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID} or self.sp.id_to_piece(PAD_ID) != "<pad>":
            raise ValueError(f"{model_file}: special ids {got}; expected T5's <pad>=0, </s>=1, <unk>=2")
        n = self.sp.get_piece_size()
        self.specials = {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID}
        self.specials.update({f"<extra_id_{i}>": n + extra_ids - 1 - i for i in range(extra_ids)})
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self.specials) + ")")
        self.vocab_size = n + extra_ids

    def pieces(self, text: str) -> list[int]:
        out: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:  # the regex's captured group: a special token
                out.append(self.specials[part])
            elif part:
                out.extend(self.sp.encode(part))
        return out


def load_tokenizer(source: str | None = "bytes", max_length: int = DEFAULT_MAX_LENGTH) -> Tokenizer:
    """'bytes' (or None) -> ByteTokenizer; a folder holding spiece.model, or a *.model file -> sentencepiece."""
    if source is None or source == "bytes":
        return ByteTokenizer(max_length)
    if os.path.isdir(source):
        file = os.path.join(source, "spiece.model")
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"tokenizer: {source!r} has no spiece.model; for a byte-level (ByT5) model pass tokenizer='bytes'"
            )
        return SentencePieceTokenizer(file, max_length)
    if os.path.isfile(source):
        return SentencePieceTokenizer(source, max_length)
    raise FileNotFoundError(
        f"tokenizer {source!r}: expected 'bytes', a folder holding spiece.model, or a sentencepiece .model file"
    )
