"""Data pipeline: reading, errors, tokenization counts, bucketing, deterministic resumable order."""

import json

import numpy as np
import pytest

from dq_jax import data
from dq_jax.hf import load_tokenizer


@pytest.fixture(scope="module")
def tok(shared_data):
    return load_tokenizer(str(shared_data / "tokenizers" / "bart-base_roberta-base"))


@pytest.fixture(scope="module")
def xsum_rows(shared_data):
    cfg = data.DataConfig(validation_files=(str(shared_data / "xsum" / "validation.jsonl"),), max_examples=64)
    return data.load_rows(cfg, "validation")


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
        cfg = data.DataConfig(train_files=(str(tmp_path / f"a.{ext}"),))
        assert data.load_rows(cfg, "train") == rows, ext


def test_clear_errors(tmp_path, shared_data):
    xsum = str(shared_data / "xsum" / "validation.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        data.load_rows(data.DataConfig(train_files=(str(tmp_path / "nope.jsonl"),)), "train")
    with pytest.raises(ValueError, match=r"Column 'article' not found in .*validation.jsonl; it has \['document', 'id', 'summary'\]"):
        data.load_rows(data.DataConfig(train_files=(xsum,), source_column="article"), "train")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="The train split .*empty.jsonl.* is empty"):
        data.load_rows(data.DataConfig(train_files=(str(tmp_path / "empty.jsonl"),)), "train")
    (tmp_path / "latin1.jsonl").write_bytes('{"document": "caf\xe9", "summary": "x"}'.encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.jsonl is not valid UTF-8"):
        data.load_rows(data.DataConfig(train_files=(str(tmp_path / "latin1.jsonl"),)), "train")
    with pytest.raises(ValueError, match="No data for split 'test'"):
        data.load_rows(data.DataConfig(train_files=(xsum,)), "test")


def test_tokenize_counts_truncation_and_keeps_eos(tok, xsum_rows, caplog):
    cfg = data.DataConfig(max_source_length=64, max_target_length=16)
    with caplog.at_level("INFO"):
        t = data.tokenize(xsum_rows, tok, cfg, "train")
    full = [len(tok(r["document"]).input_ids) for r in xsum_rows]
    assert t.truncated_source == sum(n > 64 for n in full) > 0
    assert all(len(s) <= 64 and s[0] == 0 and s[-1] == 2 for s in t.source)
    assert f"truncated {t.truncated_source} sources (> 64 tokens)" in caplog.text


def test_all_sources_truncated_is_reported(tok, xsum_rows, caplog):
    with caplog.at_level("WARNING"):
        data.tokenize(xsum_rows[1:9], tok, data.DataConfig(max_source_length=8), "train")
    assert "all 8 sources are longer than max_source_length=8" in caplog.text


def test_collate_buckets_and_labels():
    t = data.Tokenized([np.array([0, 5, 6, 2]), np.array([0, 7, 2])], [np.array([0, 9, 2]), np.array([0, 8, 8, 8, 2])], [])
    b = data.collate(t, np.array([0, 1]), data.DataConfig(min_bucket=4, max_source_length=64), pad=1, start=2,
                     model_type="bart")
    np.testing.assert_array_equal(b["input_ids"], [[0, 5, 6, 2], [0, 7, 2, 1]])
    np.testing.assert_array_equal(b["attention_mask"], [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(b["labels"], [[0, 9, 2, -100, -100, -100, -100, -100], [0, 8, 8, 8, 2, -100, -100, -100]])
    np.testing.assert_array_equal(b["decoder_input_ids"], [[2, 0, 9, 2, 1, 1, 1, 1], [2, 0, 8, 8, 8, 2, 1, 1]])
    assert data.bucket(5, 16, 1024) == 16 and data.bucket(17, 16, 1024) == 32 and data.bucket(900, 16, 1000) == 1000


def test_mbart_shift_moves_the_language_code_to_the_front():
    labels = np.array([[47, 48, 2, 250020, 1], [49, 2, 250020, 1, 1]])
    np.testing.assert_array_equal(data.shift_right(labels, None, 1, "mbart"),
                                  [[250020, 47, 48, 2, 250020], [250020, 49, 2, 250020, 1]])


def test_iterator_is_deterministic_and_resumes(tok, xsum_rows):
    cfg = data.DataConfig(max_source_length=128, max_target_length=32)
    t = data.tokenize(xsum_rows, tok, cfg)
    make = lambda state=None: data.TrainIterator(t, cfg, batch_size=4, accum=2, seed=3, pad=1, start=2,
                                                 model_type="bart", state=state)
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
    seen = np.concatenate([data.epoch_order(np.array([len(s) for s in t.source]), 8, 3, 0).ravel()])
    assert sorted(seen) == list(range(64))
    assert not np.array_equal(data.epoch_order(np.arange(64), 8, 3, 0), data.epoch_order(np.arange(64), 8, 3, 1))
