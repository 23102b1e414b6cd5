"""Data pipeline: reading, errors, tokenization counts, bucketing, deterministic resumable order."""

import dataclasses
import json

import numpy as np
import pytest

from dq_jax.data import batches as data
from dq_jax.data import source as data_source
from dq_jax.data import token_cache
from dq_jax.data.columns import TokenColumn, Tokenized
from dq_jax.data.config import DataConfig
from dq_jax.model.hf import load_tokenizer


@pytest.fixture(scope="module")
def tok(shared_data):
    return load_tokenizer(str(shared_data / "tokenizers" / "bart-base_roberta-base"))


def load_rows(cfg: DataConfig, split: str) -> list[dict]:
    return data_source.load_split(cfg, split)[0].to_list()


@pytest.fixture(scope="module")
def xsum_file(shared_data):
    return str(shared_data / "xsum" / "validation.jsonl")


@pytest.fixture(scope="module")
def xsum_rows(xsum_file):
    return load_rows(DataConfig(validation_files=(xsum_file,), max_examples=64), "validation")


def tokenized(tok, cfg: DataConfig, tmp_path, xsum_file, n: int = 64, start: int = 0) -> Tokenized:
    """The first `n` rows of XSum's validation file after `start`, through the tokenization cache."""
    rows = load_rows(DataConfig(validation_files=(xsum_file,), max_examples=start + n), "validation")[start:]
    path = tmp_path / f"rows_{start}_{n}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = dataclasses.replace(cfg, train_files=(str(path),), cache_dir=str(tmp_path / "cache"))
    return token_cache.tokenized_split(cfg, "train", tok)


def test_reads_jsonl_csv_and_parquet_alike(tmp_path, xsum_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"document": r["document"], "summary": r["summary"]} for r in xsum_rows[:5]]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    import csv

    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["document", "summary"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for ext in ("jsonl", "json", "csv", "parquet"):
        cfg = DataConfig(train_files=(str(tmp_path / f"a.{ext}"),))
        assert load_rows(cfg, "train") == rows, ext


def test_clear_errors(tmp_path, shared_data):
    xsum = str(shared_data / "xsum" / "validation.jsonl")
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl does not exist"):
        load_rows(DataConfig(train_files=(str(tmp_path / "nope.jsonl"),)), "train")
    with pytest.raises(
        ValueError, match=r"Column 'article' not found in .*validation.jsonl; it has \['document', 'id', 'summary'\]"
    ):
        load_rows(DataConfig(train_files=(xsum,), source_column="article"), "train")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"The train split .*empty\.jsonl.* is empty"):
        load_rows(DataConfig(train_files=(str(tmp_path / "empty.jsonl"),)), "train")
    (tmp_path / "latin1.jsonl").write_bytes('{"document": "caf\xe9", "summary": "x"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.jsonl is not valid UTF-8"):
        load_rows(DataConfig(train_files=(str(tmp_path / "latin1.jsonl"),)), "train")
    with pytest.raises(ValueError, match="No data for split 'test'"):
        load_rows(DataConfig(train_files=(xsum,)), "test")


def test_tokenize_counts_truncation_and_keeps_eos(tok, xsum_rows, xsum_file, tmp_path, caplog):
    cfg = DataConfig(max_source_length=64, max_target_length=16)
    with caplog.at_level("INFO"):
        t = tokenized(tok, cfg, tmp_path, xsum_file)
    full = [len(tok(r["document"]).input_ids) for r in xsum_rows]
    assert t.truncated_source == sum(n > 64 for n in full) > 0
    assert all(len(t.source[i]) <= 64 and t.source[i][0] == 0 and t.source[i][-1] == 2 for i in range(len(t)))
    assert list(t.references[:3]) == [r["summary"] for r in xsum_rows[:3]]
    for i in (0, 5):  # untruncated ids are the tokenizer's, truncated ones its first 63 and EOS
        ids = tok(xsum_rows[i]["document"]).input_ids
        np.testing.assert_array_equal(t.source[i], ids if len(ids) <= 64 else ids[:63] + [2])
    assert f"truncated {t.truncated_source} sources (> 64 tokens)" in caplog.text


def test_all_sources_truncated_is_reported(tok, xsum_file, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        tokenized(tok, DataConfig(max_source_length=8), tmp_path, xsum_file, n=8, start=1)
    assert "all 8 sources are longer than max_source_length=8" in caplog.text


def test_collate_buckets_and_labels():
    t = Tokenized(
        TokenColumn.from_lists([[0, 5, 6, 2], [0, 7, 2]]), TokenColumn.from_lists([[0, 9, 2], [0, 8, 8, 8, 2]]), []
    )
    b = data.collate(
        t, np.array([0, 1]), DataConfig(min_bucket=4, max_source_length=64), pad=1, start=2, model_type="bart"
    )
    np.testing.assert_array_equal(b["input_ids"], [[0, 5, 6, 2], [0, 7, 2, 1]])
    np.testing.assert_array_equal(b["attention_mask"], [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(
        b["labels"], [[0, 9, 2, -100, -100, -100, -100, -100], [0, 8, 8, 8, 2, -100, -100, -100]]
    )
    np.testing.assert_array_equal(b["decoder_input_ids"], [[2, 0, 9, 2, 1, 1, 1, 1], [2, 0, 8, 8, 8, 2, 1, 1]])
    assert data.bucket(5, 16, 1024) == 16 and data.bucket(17, 16, 1024) == 32 and data.bucket(900, 16, 1000) == 1000


def test_mbart_shift_moves_the_language_code_to_the_front():
    labels = np.array([[47, 48, 2, 250020, 1], [49, 2, 250020, 1, 1]])
    np.testing.assert_array_equal(
        data.shift_right(labels, None, 1, "mbart"), [[250020, 47, 48, 2, 250020], [250020, 49, 2, 250020, 1]]
    )


def test_iterator_is_deterministic_and_resumes(tok, xsum_file, tmp_path):
    cfg = DataConfig(max_source_length=128, max_target_length=32)
    t = tokenized(tok, cfg, tmp_path, xsum_file)
    make = lambda state=None: data.TrainIterator(
        t, cfg, batch_size=4, accum=2, seed=3, pad=1, start=2, model_type="bart", state=state
    )
    a = make()
    first = [next(a) for _ in range(10)]  # crosses an epoch boundary (8 steps per epoch)
    assert a.state == {"epoch": 1, "position": 2}
    assert first[0]["input_ids"].shape[:2] == (2, 4)
    b = make()
    for _ in range(5):
        next(b)
    resumed = make(state=b.state)
    for x, y in zip(first[5:], [next(resumed) for _ in range(5)]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # each epoch visits every example once (64 examples, 8 batches of 8)
    seen = np.concatenate([data.epoch_order(t.source.lengths(), 8, 3, 0).ravel()])
    assert sorted(seen) == list(range(64))
    assert not np.array_equal(data.epoch_order(np.arange(64), 8, 3, 0), data.epoch_order(np.arange(64), 8, 3, 1))
