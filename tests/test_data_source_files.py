"""Where rows come from (dq_jax.data.source), local files: every bad row of a JSON Lines, CSV or
Parquet file named, empty rows dropped, files concatenated in order."""

import json
import re

import pytest

from tests.data_source_helpers import _csv, _jsonl, _load, _parquet, _rows, _strip

# --- jsonl ---------------------------------------------------------------------------------------


def test_jsonl_row_without_the_target_names_file_line_and_column(tmp_path):
    rows = _rows(10)
    del rows[6]["summary"]  # line 7
    path = _jsonl(tmp_path / "no_target.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 7 has no 'summary' column")):
        _load(path)


def test_jsonl_null_target_names_its_line(tmp_path):
    rows = _rows(10)
    rows[4]["summary"] = None
    path = _jsonl(tmp_path / "null.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 5 has a null 'summary'")):
        _load(path)


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    rows = _rows(4)
    rows[3]["summary"] = None
    path = tmp_path / "blank.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[2:]))
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 5 has a null 'summary'")):
        _load(path)


@pytest.mark.parametrize("at", [0, 2])
def test_jsonl_number_as_source_is_named(tmp_path, at):
    rows = _rows(6)
    rows[at]["document"] = 5
    path = _jsonl(tmp_path / "number.jsonl", rows)
    with pytest.raises(
        ValueError, match=re.escape(f"{path}: line {at + 1} has 5 (int) as 'document'; it must be a string")
    ):
        _load(path)


def test_every_target_empty_is_an_error(tmp_path):
    rows = [dict(r, summary=" " if i % 2 else "") for i, r in enumerate(_rows(6))]
    path = _jsonl(tmp_path / "no_targets.jsonl", rows)
    with pytest.raises(
        ValueError, match=re.escape(f"Every 'summary' in the train split ({path}) is empty; check data.target_column")
    ):
        _load(path)


def test_empty_sources_and_targets_are_dropped_and_counted(tmp_path, caplog):
    rows = _rows(10)
    rows[1]["document"] = ""
    rows[3]["document"] = " \n\t "
    rows[8]["summary"] = "  "
    path = _jsonl(tmp_path / "gaps.jsonl", rows)
    with caplog.at_level("WARNING", logger="dq_jax.data.source"):
        got = _load(path)
    assert got == [r for i, r in enumerate(rows) if i not in (1, 3, 8)]
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert drops == [f"train: dropped 2 rows with an empty 'document' and 1 with an empty 'summary' ({path})."]


def test_max_examples_takes_the_first_rows_after_dropping(tmp_path):
    rows = _rows(8)
    rows[0]["document"] = ""
    rows[2]["summary"] = ""
    path = _jsonl(tmp_path / "gaps.jsonl", rows)
    assert _load(path, max_examples=3) == [rows[1], rows[3], rows[4]]
    assert _load(path, max_examples=100) == [r for i, r in enumerate(rows) if i not in (0, 2)]


def test_multiple_files_concatenate_in_order(tmp_path):
    a, b, c = _rows(3), _rows(2, 10), _rows(4, 20)
    files = [_jsonl(tmp_path / "a.jsonl", a), _jsonl(tmp_path / "b.jsonl", b), _jsonl(tmp_path / "c.jsonl", c)]
    assert _load(*files) == a + b + c
    assert _load(*reversed(files)) == c + b + a
    assert _load(*files, max_examples=4) == a + b[:1]


def test_files_of_different_types_concatenate_in_order(tmp_path):
    """One split from a jsonl, a csv and a parquet file (`datasets` reads csv text as
    large_string, the others as string)."""
    a, b, c = _rows(3), _rows(2, 10), _rows(4, 20)
    files = [_jsonl(tmp_path / "a.jsonl", a), _csv(tmp_path / "b.csv", b), _parquet(tmp_path / "c.parquet", c)]
    assert _load(*files) == a + b + c


def test_json_array_file_and_extra_columns(tmp_path, shared_data):
    xsum = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:5]]
    path = tmp_path / "array.json"
    path.write_text(json.dumps(xsum))  # with the `id` column too, which is not kept
    assert _load(path) == _strip(xsum)
    rows = _rows(4)
    rows[2]["summary"] = None
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=re.escape(f"{path}: item 3 has a null 'summary'")):
        _load(path)


def test_other_column_names(tmp_path, shared_data):
    wmt = [json.loads(line) for line in (shared_data / "wmt16_en_ro" / "validation.jsonl").read_text().splitlines()[:6]]
    path = _jsonl(tmp_path / "wmt.jsonl", wmt)
    got = _load(path, source_column="en", target_column="ro")
    assert got == [{"en": r["en"], "ro": r["ro"]} for r in wmt]
    with pytest.raises(ValueError, match=re.escape(f"Column 'document' not found in {path}")):
        _load(path)


# --- csv -----------------------------------------------------------------------------------------


def test_csv_short_row_counts_as_an_empty_cell(tmp_path, caplog):
    """pandas (the `datasets` csv reader) fills a row's missing trailing cells as it reads an
    empty cell: the row is dropped and counted, like a row with an empty target."""
    path = tmp_path / "short.csv"
    path.write_text("document,summary\na,b\nc,d\ne\nf,g\n")  # line 4 has no summary cell
    with caplog.at_level("WARNING"):
        assert [r["document"] for r in _load(path)] == ["a", "c", "f"]
    assert "1 with an empty 'summary'" in caplog.text


def test_csv_missing_target_column(tmp_path):
    path = _csv(tmp_path / "title.csv", [{"document": "a", "title": "b"}], fields=("document", "title"))
    with pytest.raises(
        ValueError, match=re.escape(f"Column 'summary' not found in {path}; it has ['document', 'title']")
    ):
        _load(path)


@pytest.mark.parametrize("cell", ["", '""', "  "])
def test_csv_empty_cell_is_dropped_like_an_empty_string(tmp_path, cell, caplog):
    path = tmp_path / "empty_cell.csv"
    path.write_text(f"document,summary\na,b\nc,{cell}\ne,f\n")
    with caplog.at_level("WARNING"):
        assert _load(path) == [{"document": "a", "summary": "b"}, {"document": "e", "summary": "f"}]
    assert "dropped 0 rows with an empty 'document' and 1 with an empty 'summary'" in caplog.text


def test_csv_numbers_are_text(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("document,summary\n1,a\n2.50,b\n")
    assert _load(path) == [{"document": "1", "summary": "a"}, {"document": "2.50", "summary": "b"}]


def test_csv_with_quotes_commas_and_newlines(tmp_path, shared_data):
    xsum = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:8]]
    path = _csv(tmp_path / "xsum.csv", _strip(xsum))  # documents have newlines, commas and quotes
    assert _load(path) == _strip(xsum)


# --- parquet -------------------------------------------------------------------------------------


def test_parquet_null_target_names_its_row(tmp_path):
    rows = _rows(10)
    rows[3]["summary"] = None
    path = _parquet(tmp_path / "null.parquet", rows)
    with pytest.raises(ValueError, match=re.escape(f"{path}: row 4 has a null 'summary'")):
        _load(path)


def test_parquet_missing_target_column(tmp_path):
    path = _parquet(tmp_path / "no_target.parquet", [{"document": r["document"]} for r in _rows(3)])
    with pytest.raises(ValueError, match=re.escape(f"Column 'summary' not found in {path}; it has ['document']")):
        _load(path)


def test_parquet_number_source_names_its_row(tmp_path):
    path = _parquet(tmp_path / "ints.parquet", [{"document": i, "summary": f"s{i}"} for i in range(3)])
    with pytest.raises(ValueError, match=re.escape(f"{path}: row 1 has 0 (int) as 'document'; it must be a string")):
        _load(path)
