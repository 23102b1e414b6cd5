"""The tokenization cache (dq_jax.data.token_cache): hits and misses, the tokenizer's own ids with
its special suffix kept on truncation, half-written entries, and parallel tokenization."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from dq_jax.data import source as data_source
from dq_jax.data import token_cache, tokenization
from dq_jax.data.byte_level_bpe import IdRows
from dq_jax.data.config import DataConfig
from dq_jax.model import hf

HIT = "tokenization cache hit"


@pytest.fixture(scope="module")
def tok(shared_data):
    return hf.load_tokenizer(str(shared_data / "tokenizers" / "bart-base_roberta-base"))


@pytest.fixture(scope="module")
def xsum(shared_data) -> list[dict]:
    """XSum validation rows with both texts non-empty (the rows load_split keeps), id dropped."""
    rows = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()]
    return [
        {"document": r["document"], "summary": r["summary"]}
        for r in rows
        if r["document"].strip() and r["summary"].strip()
    ]


def _write(path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(tmp_path, *files, **kw) -> DataConfig:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("max_source_length", 64)
    kw.setdefault("max_target_length", 16)
    return DataConfig(train_files=tuple(map(str, files)), **kw)


def _run(cfg, tokenizer, caplog, split="train"):
    """(Tokenized, whether it came from the cache)."""
    caplog.clear()
    with caplog.at_level("INFO", logger="dq_jax.data.token_cache"):
        out = token_cache.tokenized_split(cfg, split, tokenizer)
    return out, any(HIT in r.getMessage() for r in caplog.records)


def _rows_of(column) -> list[list[int]]:
    return [column[i].tolist() for i in range(len(column))]


def _assert_same(a, b):
    assert len(a) == len(b)
    assert _rows_of(a.source) == _rows_of(b.source)
    assert _rows_of(a.target) == _rows_of(b.target)
    assert list(a.references) == list(b.references)
    assert (a.truncated_source, a.truncated_target) == (b.truncated_source, b.truncated_target)


def _entries(cfg) -> list[str]:
    root = token_cache.cache_root(cfg)
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def test_second_call_hits_and_tokenizes_nothing(tmp_path, tok, xsum, caplog, monkeypatch):
    import datasets

    cfg = _cfg(tmp_path, _write(tmp_path / "train.jsonl", xsum[:40]))
    first, hit = _run(cfg, tok, caplog)
    assert not hit and len(first) == 40
    assert _entries(cfg) == [token_cache.cache_key(cfg, "train", data_source.origin(cfg, "train"), tok)]

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again on a cache hit")

    monkeypatch.setattr(datasets.Dataset, "map", refuse)
    monkeypatch.setattr(data_source, "load_split", refuse)
    second, hit = _run(cfg, tok, caplog)
    assert hit
    _assert_same(first, second)
    assert next(r.getMessage() for r in caplog.records if HIT in r.getMessage()).startswith(
        f"train: {HIT} ({tmp_path / 'train.jsonl'})"
    )


def test_key_follows_content_lengths_and_tokenizer(tmp_path, tok, xsum, caplog, shared_data):
    rows = xsum[:20]
    path = _write(tmp_path / "a" / "train.jsonl", rows)
    cache = str(tmp_path / "cache")
    base, hit = _run(_cfg(tmp_path, path, cache_dir=cache), tok, caplog)
    assert not hit
    # the same bytes elsewhere: a hit
    copy = tmp_path / "b" / "train.jsonl"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    again, hit = _run(_cfg(tmp_path, copy, cache_dir=cache), tok, caplog)
    assert hit
    _assert_same(base, again)
    # another max length, another row, another tokenizer, another split: misses
    assert not _run(_cfg(tmp_path, path, cache_dir=cache, max_source_length=32), tok, caplog)[1]
    assert _run(_cfg(tmp_path, path, cache_dir=cache, max_source_length=32), tok, caplog)[1]
    assert not _run(_cfg(tmp_path, path, cache_dir=cache, max_target_length=8), tok, caplog)[1]
    assert not _run(_cfg(tmp_path, path, cache_dir=cache, max_examples=10), tok, caplog)[1]
    changed = _write(tmp_path / "c" / "train.jsonl", rows[:-1] + [dict(rows[-1], summary=rows[-1]["summary"] + "!")])
    out, hit = _run(_cfg(tmp_path, changed, cache_dir=cache), tok, caplog)
    assert not hit and out.references[-1].endswith("!")
    gpt2 = hf.load_tokenizer(str(shared_data / "tokenizers" / "gpt2"))
    assert not _run(_cfg(tmp_path, path, cache_dir=cache), gpt2, caplog)[1]
    more = hf.load_tokenizer(str(shared_data / "tokenizers" / "bart-base_roberta-base"))
    more.add_tokens(["<extra_token>"])
    assert not _run(_cfg(tmp_path, path, cache_dir=cache), more, caplog)[1]
    assert not _run(
        DataConfig(validation_files=(path,), cache_dir=cache, max_source_length=64, max_target_length=16),
        tok,
        caplog,
        split="validation",
    )[1]
    assert _run(_cfg(tmp_path, path, cache_dir=cache), tok, caplog)[1]  # the first entry is still there


def test_bart_ids_are_the_tokenizers_with_eos_kept(tmp_path, tok, xsum, caplog):
    rows = xsum[:64]
    out, _ = _run(_cfg(tmp_path, _write(tmp_path / "train.jsonl", rows)), tok, caplog)
    assert tokenization.special_suffix(tok) == 1
    src = [tok(r["document"]).input_ids for r in rows]
    tgt = [tok(text_target=r["summary"]).input_ids for r in rows]
    assert out.truncated_source == sum(len(s) > 64 for s in src) > 0
    assert out.truncated_target == sum(len(t) > 16 for t in tgt) > 0
    assert 0 < out.truncated_target < len(rows)  # both kinds of row are checked below
    assert _rows_of(out.source) == [s if len(s) <= 64 else s[:63] + [tok.eos_token_id] for s in src]
    assert _rows_of(out.target) == [t if len(t) <= 16 else t[:15] + [tok.eos_token_id] for t in tgt]
    assert list(out.references) == [r["summary"] for r in rows]
    assert f"truncated {out.truncated_source} sources (> 64 tokens)" in caplog.text


def test_mbart_truncation_keeps_eos_and_the_language_code(tmp_path, mbart_tok, shared_data, caplog):
    rows = [
        json.loads(line) for line in (shared_data / "wmt16_en_ro" / "validation.jsonl").read_text().splitlines()[:48]
    ]
    rows = [{"en": r["en"], "ro": r["ro"]} for r in rows]
    cfg = _cfg(
        tmp_path,
        _write(tmp_path / "wmt.jsonl", rows),
        source_column="en",
        target_column="ro",
        src_lang="en_XX",
        tgt_lang="ro_RO",
        max_source_length=24,
        max_target_length=20,
    )
    out, _ = _run(cfg, mbart_tok, caplog)
    assert tokenization.special_suffix(mbart_tok) == 2
    eos, en, ro = mbart_tok.eos_token_id, *mbart_tok.convert_tokens_to_ids(["en_XX", "ro_RO"])
    src = [mbart_tok(r["en"]).input_ids for r in rows]
    tgt = [mbart_tok(text_target=r["ro"]).input_ids for r in rows]
    assert all(s[-2:] == [eos, en] for s in src) and all(t[-2:] == [eos, ro] for t in tgt)
    assert 0 < out.truncated_source == sum(len(s) > 24 for s in src) < len(rows)
    assert 0 < out.truncated_target == sum(len(t) > 20 for t in tgt) < len(rows)
    assert _rows_of(out.source) == [s if len(s) <= 24 else s[:22] + [eos, en] for s in src]
    assert _rows_of(out.target) == [t if len(t) <= 20 else t[:18] + [eos, ro] for t in tgt]
    assert list(out.references) == [r["ro"] for r in rows]
    # the languages are part of the key
    swapped = DataConfig(**{**cfg.__dict__, "src_lang": "ro_RO", "tgt_lang": "en_XX"})
    back, hit = _run(swapped, mbart_tok, caplog)
    assert not hit and back.source[0][-1] == ro


# Texts where a cut before a space could go wrong: runs of mixed whitespace, Unicode spaces
# (no-break, ideographic, line separator, and \x1c, which str.isspace calls a space and the
# split pattern does not), contractions, digits, punctuation runs, special tokens in the text,
# text without spaces, words that take many characters per token, a leading space.
_AWKWARD = [
    "Hello  world\t\tfoo\n\nbar it's   they'll  42  3.14 -- (x) " * 12,
    "a\u00a0b\u3000c\x1cd\u2028e f  g\u00a0 h " * 14,
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8" * 30,
    "\U0001f600 \U0001f600\U0001f600 caf\u00e9 na\u00efve " * 15,
    " <mask> <s> </s> token<mask> " * 20,
    " ".join(["x" * 30, "y" * 41, "zq" * 17] * 8),
    "   leading spaces then words " * 20,
    "word " * 8,
    "word " * 9,
    "",
]


def test_long_texts_encoded_from_a_prefix_give_the_whole_texts_ids(tok, mbart_tok, xsum, shared_data):
    """BART's byte-level BPE may encode a long text from a prefix (`tokenization.prefix_exact`):
    the truncated ids and the truncation flags equal those of the whole text, on real articles
    and on awkward texts, for sources and targets, with and without a second, whole encoding,
    through `tiktoken` and through the tokenizer."""
    assert tokenization.prefix_exact(tok)
    assert not tokenization.prefix_exact(mbart_tok)  # sentencepiece normalizer and Metaspace
    cnn = [
        json.loads(line)["document"]
        for line in (shared_data / "cnn_dailymail" / "validation_stories_allennlp.jsonl").read_text().splitlines()
    ]
    texts = [r["document"] for r in xsum[:200]] + cnn + _AWKWARD
    suffix = tokenization.special_suffix(tok)
    fast = tokenization.Encoder.of(tok)
    assert fast.bpe is not None and fast.cut_prefix
    cut_rows = again_rows = 0
    for max_len in (8, 16, 64, 1024):
        limit = tokenization._CUT_CHARS_PER_TOKEN * max_len
        for target in (False, True):
            a, cut_a = tokenization._truncated(tokenization._token_ids(tok, texts, target), max_len, suffix)
            for encoder in (fast, dataclasses.replace(fast, bpe=None, frames=())):
                b, cut_b = tokenization._truncated(encoder.kept_ids(texts, target, max_len), max_len, suffix)
                assert a.to_pylist() == b.to_pylist() and cut_a.tolist() == cut_b.tolist(), (max_len, target)
        cuts = [t for t in texts if tokenization._prefix_cut(t, limit) is not t]
        cut_rows += len(cuts)
        again_rows += int(
            (
                tokenization._token_ids(tok, [tokenization._prefix_cut(t, limit) for t in cuts], False).lengths()
                <= max_len
            ).sum()
        )
    assert cut_rows > 200 and again_rows > 0  # both branches ran


def test_truncation_keeps_the_head_and_the_special_suffix():
    rows = IdRows.from_lists([[0, 5, 6, 7, 8, 2], [0, 5, 2], [], [0, 9, 9, 9, 1, 2]])
    ids, cut = tokenization._truncated(rows, 4, 2)
    assert ids.to_pylist() == [[0, 5, 8, 2], [0, 5, 2], [], [0, 9, 1, 2]]
    assert cut.tolist() == [True, False, False, True]
    ids, cut = tokenization._truncated(rows, 6, 1)
    assert ids.to_pylist() == [[0, 5, 6, 7, 8, 2], [0, 5, 2], [], [0, 9, 9, 9, 1, 2]] and not cut.any()


def test_prefix_cut_stops_before_a_space_after_a_non_space():
    cut = tokenization._prefix_cut
    assert cut("ab cd ef", 20) == "ab cd ef"
    assert cut("ab cd ef", 5) == "ab cd"  # the space at index 5 is kept out
    assert cut("ab cd ef", 4) == "ab"
    assert cut("ab   cd ef", 6) == "ab"  # never inside a run of spaces
    assert cut("ab\u00a0 cd", 4) == "ab\u00a0 cd"  # a space after another space: no cut point
    assert cut(" abcdef ghi", 5) == " abcdef ghi"  # only a space at index 0: no cut
    assert cut("abcdefghij", 3) == "abcdefghij"


def _same_entry_key(cfg, tok) -> str:
    return os.path.join(
        token_cache.cache_root(cfg), token_cache.cache_key(cfg, "train", data_source.origin(cfg, "train"), tok)
    )


def test_leftovers_of_an_interrupted_job_are_never_used(tmp_path, tok, xsum, caplog):
    path = _write(tmp_path / "train.jsonl", xsum[:24])
    reference, _ = _run(_cfg(tmp_path, path, cache_dir=str(tmp_path / "reference")), tok, caplog)
    cfg = _cfg(tmp_path, path)
    entry = _same_entry_key(cfg, tok)
    for pid in (os.getpid(), 999_999_999):  # this process's own earlier attempt, and another job's
        work = f"{entry}.tmp-{pid}"
        os.makedirs(os.path.join(work, "map"))
        os.makedirs(os.path.join(work, "dataset"))
        with open(os.path.join(work, "map", "tokens.arrow"), "wb") as f:
            f.write(b"half an arrow file")
        with open(os.path.join(work, "meta.json"), "w") as f:
            json.dump({"rows": 1, "truncated_source": 99, "truncated_target": 99}, f)
    out, hit = _run(cfg, tok, caplog)
    assert not hit
    _assert_same(out, reference)
    assert os.path.isfile(os.path.join(entry, "meta.json"))
    assert not os.path.exists(f"{entry}.tmp-{os.getpid()}")
    again, hit = _run(cfg, tok, caplog)
    assert hit
    _assert_same(again, reference)


@pytest.mark.parametrize("leftover", ["empty", "dataset_only"])
def test_an_entry_without_meta_json_is_rebuilt(tmp_path, tok, xsum, caplog, leftover):
    path = _write(tmp_path / "train.jsonl", xsum[:24])
    reference, _ = _run(_cfg(tmp_path, path, cache_dir=str(tmp_path / "reference")), tok, caplog)
    cfg = _cfg(tmp_path, path)
    entry = _same_entry_key(cfg, tok)
    os.makedirs(entry)
    if leftover == "dataset_only":  # e.g. written by hand, or meta.json lost
        shutil.copytree(
            os.path.join(_same_entry_key(_cfg(tmp_path, path, cache_dir=str(tmp_path / "reference")), tok), "dataset"),
            os.path.join(entry, "dataset"),
        )
    out, hit = _run(cfg, tok, caplog)
    assert not hit
    _assert_same(out, reference)
    assert os.path.isfile(os.path.join(entry, "meta.json"))


def test_parallel_tokenization_equals_serial(tmp_path, tok, xsum, caplog, monkeypatch):
    import concurrent.futures

    short = [{"document": r["document"][:400], "summary": r["summary"]} for r in xsum]
    rows = (short * (-(-5000 // len(short))))[:5000]
    path = _write(tmp_path / "big.jsonl", rows)
    pools = []

    class Pool(concurrent.futures.ProcessPoolExecutor):  # records how the workers start
        def __init__(self, max_workers, mp_context):
            pools.append((max_workers, mp_context.get_start_method()))
            super().__init__(max_workers, mp_context=mp_context)

    monkeypatch.setattr(tokenization.concurrent.futures, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(tokenization, "_MIN_ROWS_PER_PROC", 2000)  # two workers for a small file
    serial, _ = _run(_cfg(tmp_path, path, cache_dir=str(tmp_path / "serial"), num_proc=1), tok, caplog)
    parallel, _ = _run(_cfg(tmp_path, path, cache_dir=str(tmp_path / "parallel"), num_proc=2), tok, caplog)
    assert pools == [(2, "spawn")]  # only the parallel run, spawned (this process runs JAX's threads)
    assert len(serial) == len(parallel) == 5000
    for a, b in ((serial.source, parallel.source), (serial.target, parallel.target)):
        np.testing.assert_array_equal(a.lengths(), b.lengths())
        np.testing.assert_array_equal(np.concatenate(a.values), np.concatenate(b.values))
    assert list(serial.references) == list(parallel.references) == [r["summary"] for r in rows]
    assert (serial.truncated_source, serial.truncated_target) == (parallel.truncated_source, parallel.truncated_target)
    assert serial.truncated_source > 0
