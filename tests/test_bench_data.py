"""bench.data at a tiny size: the corpus, the digests and the three workers on 250 XSum pairs."""

import numpy as np

from bench import data as bench_data
from bench import data_corpus, data_report, data_workers
from bench.common import worker_env
from dq_jax.data.columns import TokenColumn


def test_build_corpus_cycles_the_source(tmp_path, shared_data):
    src = shared_data / "cnn_dailymail" / "validation_mini100.jsonl"
    out = tmp_path / "c.jsonl"
    assert data_corpus.build_corpus(str(src), 250, str(out)) == 250
    lines = out.read_text().splitlines()
    assert len(lines) == 250 and lines[100] == lines[0] and lines[249] == lines[49]


def test_digest_is_the_same_for_arrays_and_token_columns():
    rows = [[0, 5, 2], [0, 2], [0, 7, 8, 9, 2]]
    arrays = [np.asarray(r, np.int32) for r in rows]
    col = TokenColumn.from_lists(rows)
    assert data_workers.rows_digest(arrays, arrays) == data_workers.rows_digest(col, col)
    assert data_workers.rows_digest(arrays, arrays, [True, False, True]) == data_workers.rows_digest(
        TokenColumn.from_lists([rows[0], rows[2]]), TokenColumn.from_lists([rows[0], rows[2]])
    )
    assert data_workers.rows_digest(arrays, arrays)[1] != data_workers.rows_digest(arrays[::-1], arrays[::-1])[1]


def test_three_workers_on_a_tiny_corpus(tmp_path):
    old_path, why = data_corpus.extract_old(str(tmp_path))
    assert old_path, why
    # 250 rows include XSum validation's row 219, whose document is empty: the new path drops it
    rec = bench_data.run_corpus(
        "xsum", 250, str(tmp_path), run_today=True, why_not_today=None, old_path=old_path, num_proc=0, env=worker_env()
    )
    assert rec["status"] == {"today": "ok", "cold": "ok", "cache_hit": "ok"}, rec["workers"]
    assert all(rec["seconds"][k] > 0 and rec["peak_rss_mib"][k] > 50 for k in data_workers.KINDS)
    assert set(rec["speedup"]) == {"cold vs today", "cache_hit vs today"}
    assert rec["agreement"]["cache_hit vs cold"]["identical"]
    vs_today = rec["agreement"]["cold vs today"]
    assert vs_today["rows"] == vs_today["equal"] == 249 and vs_today["all_rows_equal"]
    assert vs_today["today_rows"] == 250 and vs_today["today_dropped_empty"] == 1
    assert "tokenize" in rec["phases"]["cold"] and "tokenize" not in rec["phases"]["cache_hit"]
    assert "identical to cold" in data_report.table(rec)


def test_today_skipped_with_its_reason(tmp_path):
    rec = {
        "corpus": "cnn_dm",
        "seconds": dict.fromkeys(data_workers.KINDS),
        "peak_rss_mib": dict.fromkeys(data_workers.KINDS),
        "status": dict.fromkeys(data_workers.KINDS, "skipped: why"),
        "agreement": {},
        "workers": {k: {"status": "skipped: why"} for k in data_workers.KINDS},
    }
    assert "skipped" in data_report.table(rec)
    assert data_report.floors_line(rec).endswith("nothing measured")
