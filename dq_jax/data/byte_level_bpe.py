"""The byte-level BPE of BART, RoBERTa and GPT-2 tokenizers, encoded by `tiktoken` with the
Hugging Face tokenizer's own ids.

Why `tiktoken`: tokenizing a corpus is almost all the `tokenizers` backend's encoding (its
split pattern and merges), and OpenAI's `tiktoken` runs that same algorithm about 4x faster on
news text (bench.data has the figures), in a small, well-kept Rust package built for exactly
this encoding (GPT-2's).

What makes the ids the same:
- The split: both split a text with the GPT-2 pattern (`_PATTERN`, the one `tokenizers`'
  `ByteLevel` pre-tokenizer hard-codes); tests compare the two on every Unicode code point.
- The merges: a piece's bytes are merged pairwise until no adjacent pair merges. The tokenizer
  merges the pair with the lowest rank in `merges.txt`; `tiktoken` the pair whose concatenation
  has the lowest rank, and here every merge's result is ranked by its merge. The two agree
  whenever each token comes from one merge (required below) and the pair chosen is the rule of
  its concatenation; tests compare them on a million random concatenations of tokens, every
  alternative split of every token, and the shared corpora.
- The special tokens: the tokenizer cuts its added tokens (`<s>`, `<mask>`, ...) out of the raw
  text before splitting; `handled` is False for a text containing one, and the caller encodes
  that text with the tokenizer itself. The `<s>`/`</s>` around each text are the caller's too.
- The texts come from Arrow string columns, so they are valid UTF-8: a lone surrogate (which
  `tiktoken` would replace and the tokenizer refuse) cannot occur.

`from_tokenizer` accepts only a tokenizer whose whole pipeline is that: no normalizer, the
`ByteLevel` pre-tokenizer with its regex and no added prefix space, a BPE model without dropout,
word prefixes or suffixes, byte fallback or whole-word lookup, and a post-processor that only
adds special tokens. Anything else (mBART's sentencepiece, a lower-casing normalizer, ...) gets
None and is encoded by the tokenizer.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import NamedTuple

import numpy as np

# The GPT-2 split pattern, as `tokenizers`' ByteLevel pre-tokenizer has it.
_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Post-processors that add fixed special tokens around a single text and change nothing else.
_ADDING_ONLY = {"RobertaProcessing", "BertProcessing", "TemplateProcessing", "ByteLevel"}


class IdRows(NamedTuple):
    """Rows of token ids, flat: row `i` is `values[offsets[i]:offsets[i + 1]]`."""

    values: np.ndarray  # int32
    offsets: np.ndarray  # int64, [rows + 1]

    @classmethod
    def from_lists(cls, rows: list[list[int]]) -> IdRows:
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter(itertools.chain.from_iterable(rows), np.int32, int(offsets[-1]))
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def framed(self, prefix: list[int], suffix: list[int]) -> IdRows:
        """Every row as `prefix + row + suffix`."""
        p, s = len(prefix), len(suffix)
        offsets = self.offsets + np.arange(len(self.offsets), dtype=np.int64) * (p + s)
        values = np.empty(int(offsets[-1]), np.int32)
        body = np.ones(len(values), bool)
        for j, token in enumerate(prefix):
            values[offsets[:-1] + j] = token
            body[offsets[:-1] + j] = False
        for j, token in enumerate(suffix):
            values[offsets[1:] - s + j] = token
            body[offsets[1:] - s + j] = False
        values[body] = self.values
        return IdRows(values, offsets)

    def replaced(self, which: list[int], other: IdRows) -> IdRows:
        """These rows with row `which[k]` replaced by `other`'s row `k` (`which` ascending)."""
        if not which:
            return self
        pieces, start = [], 0
        for k, i in enumerate(which):
            pieces += [self.values[self.offsets[start] : self.offsets[i]], other.row(k)]
            start = i + 1
        pieces.append(self.values[self.offsets[start] :])
        lengths = self.lengths()
        lengths[which] = other.lengths()
        offsets = np.zeros(len(self.offsets), np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return IdRows(np.concatenate(pieces).astype(np.int32, copy=False), offsets)


class ByteLevelBPE:
    """A tokenizer's byte-level BPE through `tiktoken`: `encode` gives the ids the tokenizer
    gives a text without its special tokens, for every text `handled` accepts."""

    def __init__(self, merges: list[tuple[str, str]], vocab: dict[str, int], added: list[str]):
        import tiktoken
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        char_of = bytes_to_unicode()
        byte_of = {ch: b for b, ch in char_of.items()}
        ranks = {bytes([b]): b for b in range(256)}
        for a, b in merges:
            ranks[bytes(byte_of[c] for c in a + b)] = len(ranks)
        self._ids = np.empty(len(ranks), np.int32)  # tiktoken's rank -> the tokenizer's id
        for token, rank in ranks.items():
            self._ids[rank] = vocab["".join(char_of[b] for b in token)]
        self._encoding = tiktoken.Encoding("byte_level_bpe", pat_str=_PATTERN, mergeable_ranks=ranks, special_tokens={})
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self._parts = (merges, vocab, added)

    def __reduce__(self):  # sent to tokenization processes: rebuilt there from the same parts
        return ByteLevelBPE, self._parts

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ByteLevelBPE | None:
        """The tokenizer's BPE through `tiktoken` when its pipeline is byte-level BPE and nothing
        else (module docstring), else None."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        spec = json.loads(backend.to_str())
        model, pre, post = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("post_processor")
        posts = (post or {}).get("processors", [post]) if (post or {}).get("type") == "Sequence" else [post]
        if not (
            spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True)
            and not pre.get("add_prefix_space")
            and model.get("type") == "BPE"
            and model.get("dropout") is None
            and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")
            and not model.get("byte_fallback")
            and not model.get("ignore_merges")
            and all(p is None or p.get("type") in _ADDING_ONLY for p in posts)
        ):
            return None
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        alphabet, vocab = set(bytes_to_unicode().values()), model["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        results = ["".join(m) for m in merges]
        # Every byte is a token, and every merge makes a token no other merge makes (`tiktoken`
        # ranks tokens, not pairs: a token from two merges would have one rank for both).
        if not (
            all(ch in vocab for ch in alphabet)
            and len(set(results)) == len(results)
            and all(len(m) == 2 and set(m[0] + m[1]) <= alphabet for m in merges)
            and all(r in vocab for r in results)
        ):
            return None
        return cls(merges, vocab, [t["content"] for t in spec.get("added_tokens", [])])

    def handled(self, texts: list[str]) -> np.ndarray:
        """[N] bool: whether `encode` gives the tokenizer's ids for each text (no added token
        in it)."""
        if self._added is None:
            return np.ones(len(texts), bool)
        return np.fromiter((self._added.search(t) is None for t in texts), bool, len(texts))

    def encode(self, texts: list[str]) -> IdRows:
        """The tokenizer's ids of each text, without special tokens."""
        rows = IdRows.from_lists([self._encoding.encode_ordinary(t) for t in texts])
        return IdRows(self._ids[rows.values], rows.offsets)
