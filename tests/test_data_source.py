"""Where rows come from (dq_jax.data.source): every bad row named, empty rows dropped, the hub's
parquet fallback, and the checks a run makes before it downloads or tokenizes anything."""

import csv
import json
import re

import pytest

from dq_jax.data import source as data_source
from dq_jax.data.config import DataConfig


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"document": f"document {i}", "summary": f"summary {i}"} for i in range(start, start + n)]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _csv(path, rows, fields=("document", "summary")) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(fields))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _parquet(path, rows) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _load(*files, split="train", **kw) -> list[dict]:
    ds, _ = data_source.load_split(DataConfig(**{f"{split}_files": tuple(map(str, files))}, **kw), split)
    assert ds.column_names == [kw.get("source_column", "document"), kw.get("target_column", "summary")]
    return ds.to_list()


def _strip(rows) -> list[dict]:
    return [{"document": r["document"], "summary": r["summary"]} for r in rows]


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
    with pytest.raises(ValueError, match=re.escape(f"{path}: line {at + 1} has 5 (int) as 'document'; it must be "
                                                   "a string")):
        _load(path)


def test_every_target_empty_is_an_error(tmp_path):
    rows = [dict(r, summary=" " if i % 2 else "") for i, r in enumerate(_rows(6))]
    path = _jsonl(tmp_path / "no_targets.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(f"Every 'summary' in the train split ({path}) is empty; check "
                                                   "data.target_column")):
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
    with pytest.raises(ValueError, match=re.escape(f"Column 'summary' not found in {path}; it has ['document', "
                                                   "'title']")):
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


# --- check_local_files ---------------------------------------------------------------------------

def _check(tmp_path, *files, split="train"):
    data_source.check_local_files(DataConfig(**{f"{split}_files": tuple(map(str, files))}), (split,))


def test_check_missing_file(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", _rows(2))
    with pytest.raises(FileNotFoundError, match=re.escape(f"Data file {tmp_path / 'nope.jsonl'} does not exist; "
                                                          "check data.validation_files")):
        _check(tmp_path, good, tmp_path / "nope.jsonl", split="validation")


def test_check_wrong_column_in_the_second_file(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", _rows(2))
    bad = _jsonl(tmp_path / "bad.jsonl", [{"document": "a", "title": "b"}])
    _check(tmp_path, good)
    with pytest.raises(ValueError, match=re.escape(f"Column 'summary' not found in {bad}; it has ['document', "
                                                   "'title']")):
        _check(tmp_path, good, bad)


@pytest.mark.parametrize("ext", ["jsonl", "csv", "json"])
def test_check_non_utf8(tmp_path, ext):
    path = tmp_path / f"latin1.{ext}"
    text = {"jsonl": '{"document": "caf\xe9", "summary": "x"}\n', "csv": "document,summary\ncaf\xe9,x\n",
            "json": '[{"document": "caf\xe9", "summary": "x"}]'}[ext]
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid UTF-8 text")):
        _check(tmp_path, path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid UTF-8 text")):
        _load(path)


def test_check_unsupported_extension(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text('{"document": "a", "summary": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}: unsupported file type .txt; use jsonl, json, csv or "
                                                   "parquet")):
        _check(tmp_path, path)


@pytest.mark.parametrize("name,content", [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("empty.csv", ""),
                                          ("empty.json", "[]")])
def test_check_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"The train split ({path}) is empty")):
        _check(tmp_path, path)


def test_check_unreadable_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_text("")
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable parquet file (Parquet file size is 0")):
        _check(tmp_path, path)


def test_check_invalid_jsonl(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"document": "a", "summary"\n')
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid JSON Lines: line 1")):
        _check(tmp_path, path)


def test_check_split_without_data():
    with pytest.raises(ValueError, match="No data for split 'test': set data.name or data.test_files"):
        data_source.check_local_files(DataConfig(train_files=("x.jsonl",)), ("test",))
    data_source.check_local_files(DataConfig(name="some/hub_dataset"))  # the hub: nothing local to check


# --- the hub's parquet fallback, offline -------------------------------------------------------

class FakeHub:
    """`datasets.load_dataset` of a dataset that has only a loading script: the first call is
    refused as datasets >= 4 refuses it, later ones return rows."""

    def __init__(self, first_error: Exception | None):
        self.calls, self.first_error = [], first_error

    def __call__(self, *args, **kwargs):
        import datasets
        self.calls.append((args, kwargs))
        if len(self.calls) == 1 and self.first_error is not None:
            raise self.first_error
        return datasets.Dataset.from_dict({"id": ["1", "2", "3"], "document": ["d1", "", "d3"],
                                           "summary": ["s1", "s2", "s3"]})


SCRIPT_ERROR = "Dataset scripts are no longer supported, but found xsum.py"


@pytest.mark.parametrize("subset", [None, "3.0.0"])
def test_hub_script_dataset_falls_back_to_the_parquet_conversion(monkeypatch, caplog, subset):
    import datasets
    fake = FakeHub(RuntimeError(SCRIPT_ERROR))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    cfg = DataConfig(name="EdinburghNLP/xsum", subset=subset)
    with caplog.at_level("WARNING", logger="dq_jax.data.source"):
        ds, where = data_source.load_split(cfg, "validation")
    assert len(fake.calls) == 2
    assert fake.calls[0] == (("EdinburghNLP/xsum", subset), {"split": "validation", "revision": None})
    assert fake.calls[1] == (("EdinburghNLP/xsum",), {"data_dir": subset or "default", "split": "validation",
                                                      "revision": "refs/convert/parquet"})
    assert ds.to_list() == [{"document": "d1", "summary": "s1"}, {"document": "d3", "summary": "s3"}]
    assert where.description == "EdinburghNLP/xsum[validation]"
    fallback = [r for r in caplog.records if "refs/convert/parquet" in r.getMessage()]
    assert len(fallback) == 1 and fallback[0].levelname == "WARNING"
    assert "EdinburghNLP/xsum has only a loading script" in fallback[0].getMessage()


def test_hub_other_runtime_errors_are_raised_unchanged(monkeypatch):
    import datasets
    error = RuntimeError("Connection reset by peer")
    fake = FakeHub(error)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(RuntimeError) as info:
        data_source.load_split(DataConfig(name="EdinburghNLP/xsum"), "train")
    assert info.value is error and len(fake.calls) == 1


def test_hub_no_fallback_when_the_user_chose_a_revision(monkeypatch, caplog):
    import datasets
    fake = FakeHub(RuntimeError(SCRIPT_ERROR))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match=re.escape(SCRIPT_ERROR)):
        data_source.load_split(DataConfig(name="EdinburghNLP/xsum", revision="v1.0"), "train")
    assert fake.calls == [(("EdinburghNLP/xsum", None), {"split": "train", "revision": "v1.0"})]
    assert "refs/convert/parquet" not in caplog.text


def test_hub_rows_are_checked_like_files(monkeypatch):
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict(
        {"document": ["a", "b"], "title": ["x", "y"]}))
    with pytest.raises(ValueError, match=re.escape("Column 'summary' not found in EdinburghNLP/xsum[train]; it has "
                                                   "['document', 'title']")):
        data_source.load_split(DataConfig(name="EdinburghNLP/xsum"), "train")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict(
        {"document": ["a", "b", "c"], "summary": ["x", None, "z"]}))
    with pytest.raises(ValueError, match=re.escape("EdinburghNLP/xsum[train]: row 2 has no string in column "
                                                   "'summary'")):
        data_source.load_split(DataConfig(name="EdinburghNLP/xsum"), "train")


# --- checks before downloads, through the real pipeline ----------------------------------------

def _forbid(monkeypatch, calls: list, *targets):
    """Replaces each (module, attribute) with a function that records the call and fails."""
    for module, name in targets:
        def refuse(*args, _what=f"{module.__name__}.{name}", **kwargs):
            calls.append(_what)
            raise AssertionError(f"{_what} was called before the checks: {args} {kwargs}")
        monkeypatch.setattr(module, name, refuse)


def _spec(**overrides):
    from configs import xsum
    from train.settings import spec_from_config
    c = xsum.get_config()
    for key, value in overrides.items():
        section, attr = key.split(".")
        c[section][attr] = value
    return spec_from_config(c)


def test_missing_local_file_fails_before_any_download(tmp_path, monkeypatch, shared_data):
    import datasets
    import huggingface_hub
    from dq_jax.model import hf
    from dq_jax import pipeline
    calls = []
    _forbid(monkeypatch, calls, (huggingface_hub, "snapshot_download"), (hf, "resolve"), (datasets, "load_dataset"),
            (hf, "load_tokenizer"))
    missing = tmp_path / "gone" / "train.jsonl"
    # the hub teacher (facebook/bart-base) and hub validation/test splits: none may be fetched
    spec = _spec(**{"data.train_files": str(missing), "data.max_examples": 8})
    assert spec.data.name == "EdinburghNLP/xsum" and spec.teacher.path == "facebook/bart-base"
    with pytest.raises(FileNotFoundError, match=re.escape(f"Data file {missing} does not exist; check "
                                                          "data.train_files")):
        pipeline.run(spec, str(tmp_path / "work"))
    assert calls == []
    # the same with every split local and the missing one last
    xsum = str(shared_data / "xsum" / "validation.jsonl")
    spec = _spec(**{"data.name": "", "data.train_files": xsum, "data.validation_files": xsum,
                    "data.test_files": f"{xsum},{missing}"})
    with pytest.raises(FileNotFoundError, match=re.escape(f"Data file {missing} does not exist; check "
                                                          "data.test_files")):
        pipeline.run(spec, str(tmp_path / "work2"))
    assert calls == []


def test_teacher_vocab_smaller_than_the_tokenizer_fails_before_tokenizing(tmp_path, monkeypatch, shared_data):
    import datasets
    from dq_jax.model import hf
    from dq_jax import pipeline
    from dq_jax.data import token_cache
    from tests.hf_models import make_hf_model
    teacher = tmp_path / "teacher"
    make_hf_model("bart", vocab_size=1000).save_pretrained(teacher)
    rows = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:12]]
    files = {s: _jsonl(tmp_path / f"{s}.jsonl", rows[i * 4:(i + 1) * 4]) for i, s in
             enumerate(("train", "validation", "test"))}
    calls = []
    _forbid(monkeypatch, calls, (token_cache, "tokenized_split"), (datasets, "load_dataset"),
            (hf, "load_pretrained"))
    tokenizer = str(shared_data / "tokenizers" / "bart-base_roberta-base")
    spec = _spec(**{"teacher.path": str(teacher), "teacher.tokenizer": tokenizer, "data.name": "",
                    **{f"data.{s}_files": f for s, f in files.items()}})
    with pytest.raises(ValueError, match=re.escape(f"The tokenizer ({tokenizer}) has 50265 tokens but the teacher at "
                                                   f"{teacher} has vocab_size 1000")):
        pipeline.run(spec, str(tmp_path / "work"))
    assert calls == []
    assert not (tmp_path / "work" / "checkpoints").exists()


def test_a_bad_row_fails_by_name_before_the_tokenizer_trains_on_it(tmp_path, shared_data):
    """The demo config trains its tokenizer on the training rows: those are read through
    `data_source` first, so a row without the target is the named row error, not a KeyError."""
    from configs import demo
    from dq_jax import pipeline
    from train.settings import spec_from_config
    rows = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:8]]
    del rows[5]["summary"]
    good = _jsonl(tmp_path / "good.jsonl", rows[:4])
    bad = _jsonl(tmp_path / "bad.jsonl", rows)
    c = demo.get_config()
    c.data.update(synthetic="", train_files=bad, validation_files=good, test_files=good)
    with pytest.raises(ValueError, match=re.escape(f"{bad}: line 6 has no 'summary' column")):
        pipeline.run(spec_from_config(c), str(tmp_path / "work"))
    assert not (tmp_path / "work" / "tokenizer" / "tokenizer.json").exists()
