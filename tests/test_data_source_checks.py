"""The checks a run makes before it downloads or tokenizes anything (dq_jax.data.source
`check_local_files`, and through the real pipeline)."""

import json
import re

import pytest

from dq_jax.data import source as data_source
from dq_jax.data.config import DataConfig
from tests.data_source_helpers import _jsonl, _load, _rows

# --- check_local_files ---------------------------------------------------------------------------


def _check(tmp_path, *files, split="train"):
    data_source.check_local_files(DataConfig(**{f"{split}_files": tuple(map(str, files))}), (split,))


def test_check_missing_file(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", _rows(2))
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"Data file {tmp_path / 'nope.jsonl'} does not exist; check data.validation_files"),
    ):
        _check(tmp_path, good, tmp_path / "nope.jsonl", split="validation")


def test_check_wrong_column_in_the_second_file(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", _rows(2))
    bad = _jsonl(tmp_path / "bad.jsonl", [{"document": "a", "title": "b"}])
    _check(tmp_path, good)
    with pytest.raises(
        ValueError, match=re.escape(f"Column 'summary' not found in {bad}; it has ['document', 'title']")
    ):
        _check(tmp_path, good, bad)


@pytest.mark.parametrize("ext", ["jsonl", "csv", "json"])
def test_check_non_utf8(tmp_path, ext):
    path = tmp_path / f"latin1.{ext}"
    text = {
        "jsonl": '{"document": "caf\xe9", "summary": "x"}\n',
        "csv": "document,summary\ncaf\xe9,x\n",
        "json": '[{"document": "caf\xe9", "summary": "x"}]',
    }[ext]
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid UTF-8 text")):
        _check(tmp_path, path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid UTF-8 text")):
        _load(path)


def test_check_unsupported_extension(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text('{"document": "a", "summary": "b"}\n')
    with pytest.raises(
        ValueError, match=re.escape(f"{path}: unsupported file type .txt; use jsonl, json, csv or parquet")
    ):
        _check(tmp_path, path)


@pytest.mark.parametrize(
    "name,content", [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("empty.csv", ""), ("empty.json", "[]")]
)
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
    with pytest.raises(ValueError, match=re.escape("No data for split 'test': set data.name or data.test_files")):
        data_source.check_local_files(DataConfig(train_files=("x.jsonl",)), ("test",))
    data_source.check_local_files(DataConfig(name="some/hub_dataset"))  # the hub: nothing local to check


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

    from dq_jax import pipeline
    from dq_jax.model import hf

    calls = []
    _forbid(
        monkeypatch,
        calls,
        (huggingface_hub, "snapshot_download"),
        (hf, "resolve"),
        (datasets, "load_dataset"),
        (hf, "load_tokenizer"),
    )
    missing = tmp_path / "gone" / "train.jsonl"
    # the hub teacher (facebook/bart-base) and hub validation/test splits: none may be fetched
    spec = _spec(**{"data.train_files": str(missing), "data.max_examples": 8})
    assert spec.data.name == "EdinburghNLP/xsum" and spec.teacher.path == "facebook/bart-base"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"Data file {missing} does not exist; check data.train_files")
    ):
        pipeline.run(spec, str(tmp_path / "work"))
    assert calls == []
    # the same with every split local and the missing one last
    xsum = str(shared_data / "xsum" / "validation.jsonl")
    spec = _spec(
        **{
            "data.name": "",
            "data.train_files": xsum,
            "data.validation_files": xsum,
            "data.test_files": f"{xsum},{missing}",
        }
    )
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"Data file {missing} does not exist; check data.test_files")
    ):
        pipeline.run(spec, str(tmp_path / "work2"))
    assert calls == []


def test_teacher_vocab_smaller_than_the_tokenizer_fails_before_tokenizing(tmp_path, monkeypatch, shared_data):
    import datasets

    from dq_jax import pipeline
    from dq_jax.data import token_cache
    from dq_jax.model import hf
    from tests.hf_models import make_hf_model

    teacher = tmp_path / "teacher"
    make_hf_model("bart", vocab_size=1000).save_pretrained(teacher)
    rows = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:12]]
    files = {
        s: _jsonl(tmp_path / f"{s}.jsonl", rows[i * 4 : (i + 1) * 4])
        for i, s in enumerate(("train", "validation", "test"))
    }
    calls = []
    _forbid(monkeypatch, calls, (token_cache, "tokenized_split"), (datasets, "load_dataset"), (hf, "load_pretrained"))
    tokenizer = str(shared_data / "tokenizers" / "bart-base_roberta-base")
    spec = _spec(
        **{
            "teacher.path": str(teacher),
            "teacher.tokenizer": tokenizer,
            "data.name": "",
            **{f"data.{s}_files": f for s, f in files.items()},
        }
    )
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"The tokenizer ({tokenizer}) has 50265 tokens but the teacher at {teacher} has vocab_size 1000"
        ),
    ):
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
