"""Byte-level BPE through `tiktoken` (dq_jax.data.byte_level_bpe): the same ids as the tokenizer on
every shared corpus, on every Unicode code point and on random token concatenations, texts with
special tokens left to the tokenizer, and only plain byte-level BPE tokenizers accepted."""

import contextlib
import json
import pickle
import random
import sys

import numpy as np
import pytest

from dq_jax.data import tokenization
from dq_jax.data.byte_level_bpe import ByteLevelBPE, IdRows
from dq_jax.model import hf


@pytest.fixture(scope="module")
def tok(shared_data):
    return hf.load_tokenizer(str(shared_data / "tokenizers" / "bart-base_roberta-base"))


@pytest.fixture(scope="module")
def bpe(tok):
    out = ByteLevelBPE.from_tokenizer(tok)
    assert out is not None
    return out


def _bare_ids(tok, texts: list[str]) -> list[list[int]]:
    """The tokenizer's ids without its special tokens."""
    return [e.ids for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def _rows(ids: IdRows) -> list[list[int]]:
    return [ids.row(i).tolist() for i in range(len(ids))]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_every_shared_corpus_gets_the_tokenizers_ids(tok, bpe, shared_data):
    """Every string of every shared data file (XSum, CNN/DailyMail, ELI5, WMT16 En-Ro in English
    and Romanian), whole."""
    texts = []
    for path in sorted(shared_data.rglob("*")):
        if path.suffix == ".jsonl":
            texts += [s for line in path.read_text(encoding="utf-8").splitlines() for s in _strings(json.loads(line))]
        elif path.parent.name == "plain":
            texts += path.read_text(encoding="utf-8").splitlines()
    assert len(texts) > 10_000 and any("ș" in t for t in texts)  # Romanian diacritics are in
    assert bpe.handled(texts).all()
    assert _rows(bpe.encode(texts)) == _bare_ids(tok, texts)


def _code_point_texts(code_points) -> list[str]:
    """Each code point in the contexts that decide its piece: inside and around letters, digits,
    punctuation, spaces and newlines, and after a contraction."""
    return [f"a{c}a 1{c}1 !{c}! {c}a {c} x{c}{c} 's{c}'d\n{c}\n" for c in map(chr, code_points)]


def _check_code_points(tok, bpe, code_points):
    texts = _code_point_texts(code_points)
    ours, theirs = _rows(bpe.encode(texts)), _bare_ids(tok, texts)
    bad = [hex(c) for c, a, b in zip(code_points, ours, theirs) if a != b]
    assert not bad, bad[:20]


def _all_code_points():
    return [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]


def test_code_points_split_as_the_tokenizer_splits_them(tok, bpe):
    """The two regex engines' letters, digits and spaces: every code point below U+3000 (Latin,
    Greek, Cyrillic, Arabic, Indic, the Unicode spaces and punctuation) and every 97th above."""
    _check_code_points(tok, bpe, [c for c in _all_code_points() if c < 0x3000 or c % 97 == 0])


@pytest.mark.slow
def test_every_code_point_splits_as_the_tokenizer_splits_it(tok, bpe):
    _check_code_points(tok, bpe, _all_code_points())


def test_random_token_concatenations_merge_as_the_tokenizer_merges_them(tok, bpe):
    """`tiktoken` merges by the rank of a pair's concatenation, the tokenizer by the pair's own
    merge rank: the same on single pieces made of 2 to 6 random tokens (all letters, with or
    without the leading space), and on every token split in two other than by its own merge."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab = tok.backend_tokenizer.get_vocab()
    words = {}
    for token in vocab:
        # special tokens, and tokens that are part of a character, are left out
        with contextlib.suppress(KeyError, UnicodeDecodeError):
            words[token] = bytes(byte_of[c] for c in token).decode("utf-8")
    letters = [w for w in words.values() if w.strip().isalpha() and not w[1:].startswith(" ")]
    tails = [w for w in letters if not w.startswith(" ")]
    rng = random.Random(0)
    texts = [rng.choice(letters) + "".join(rng.choice(tails) for _ in range(rng.randint(1, 5))) for _ in range(100_000)]
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    rule = {
        "".join(m.split(" ") if isinstance(m, str) else m): tuple(m.split(" ") if isinstance(m, str) else m)
        for m in merges
    }
    for token, (a, b) in rule.items():  # every other split of a token into two tokens
        for k in range(1, len(token)):
            x, y = token[:k], token[k:]
            if (x, y) != (a, b) and x in vocab and y in vocab and x in words and y in words:
                texts.append(words[x] + words[y])
    assert len(texts) > 150_000
    assert _rows(bpe.encode(texts)) == _bare_ids(tok, texts)


def test_texts_with_special_tokens_are_left_to_the_tokenizer(tok):
    texts = ["plain text", "a <mask> in it", "</s>ends", "<s>", "no special < s > here", ""]
    encoder = tokenization.Encoder.of(tok)
    assert encoder.bpe.handled(texts).tolist() == [True, False, False, False, True, True]
    for target in (False, True):
        assert _rows(encoder.ids(texts, target)) == _rows(tokenization._token_ids(tok, texts, target))
    assert _rows(encoder.ids(texts, False))[1] == tok("a <mask> in it")["input_ids"]


def test_only_plain_byte_level_bpe_is_accepted(tok):
    """A change anywhere in the pipeline that `tiktoken` would not reproduce gives None."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())

    def variant(change) -> ByteLevelBPE | None:
        s = json.loads(json.dumps(spec))
        change(s)
        return ByteLevelBPE.from_tokenizer(PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(s))))

    assert variant(lambda s: None) is not None
    assert variant(lambda s: s.update(normalizer={"type": "Lowercase"})) is None
    assert variant(lambda s: s["pre_tokenizer"].update(add_prefix_space=True)) is None
    assert variant(lambda s: s["pre_tokenizer"].update(use_regex=False)) is None
    assert variant(lambda s: s["model"].update(dropout=0.1)) is None
    assert variant(lambda s: s["model"].update(ignore_merges=True)) is None
    assert variant(lambda s: s["model"].update(byte_fallback=True)) is None
    # a token made by two different merges would be ranked by one of them only
    assert (
        variant(
            lambda s: s["model"]["merges"].append(
                ["Ġ", "the"] if s["model"]["merges"][0] != ["Ġ", "the"] else ["Ġt", "he"]
            )
        )
        is None
    )


def test_a_sentencepiece_tokenizer_is_not_accepted(mbart_tok):
    assert ByteLevelBPE.from_tokenizer(mbart_tok) is None
    assert tokenization.Encoder.of(mbart_tok).bpe is None


def test_pickled_encoder_encodes_the_same(tok, bpe, shared_data):
    texts = [
        json.loads(line)["document"]
        for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:50]
    ]
    assert _rows(pickle.loads(pickle.dumps(bpe)).encode(texts)) == _rows(bpe.encode(texts))


def test_id_rows_frame_and_replace():
    rows = IdRows.from_lists([[5, 6], [], [7]])
    assert _rows(rows.framed([0], [2, 9])) == [[0, 5, 6, 2, 9], [0, 2, 9], [0, 7, 2, 9]]
    assert _rows(rows.framed([], [])) == [[5, 6], [], [7]]
    other = IdRows.from_lists([[1, 1, 1], [4]])
    assert _rows(rows.replaced([0, 2], other)) == [[1, 1, 1], [], [4]]
    assert _rows(rows.replaced([1], IdRows.from_lists([[3]]))) == [[5, 6], [3], [7]]
    assert rows.replaced([], other) is rows
    assert rows.values.dtype == np.int32


def test_a_trained_byte_level_bpe_gets_its_own_ids(tmp_path, shared_data):
    """The demo's tokenizer (byte-level BPE trained by `tokenizers`, 1000 tokens) goes through
    `tiktoken` too: the same ids on its own texts and on XSum's, where its few merges leave
    long words split many ways."""
    from dq_jax.data import demo_task

    paths = demo_task.write_splits(str(tmp_path / "data"), sizes={"train": 300, "validation": 20, "test": 20})
    demo_tok = hf.load_tokenizer(demo_task.train_tokenizer([paths["train"]], str(tmp_path / "tok"), vocab_size=1000))
    encoder = tokenization.Encoder.of(demo_tok)
    assert encoder.bpe is not None and encoder.frames == (([0], [2]), ([0], [2]))
    with open(paths["train"]) as f:
        texts = [s for line in f for s in _strings(json.loads(line))]
    texts += [
        json.loads(line)["document"]
        for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:300]
    ]
    texts += ["a <mask> here", ""]
    for target in (False, True):
        assert _rows(encoder.ids(texts, target)) == _rows(tokenization._token_ids(demo_tok, texts, target))
