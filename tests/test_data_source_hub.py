"""Where rows come from (dq_jax.data.source), the hub: the parquet fallback of a dataset that
has only a loading script, offline, and hub rows checked like files."""

import re

import pytest

from dq_jax.data import source as data_source
from dq_jax.data.config import DataConfig

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
        return datasets.Dataset.from_dict(
            {"id": ["1", "2", "3"], "document": ["d1", "", "d3"], "summary": ["s1", "s2", "s3"]}
        )


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
    assert fake.calls[1] == (
        ("EdinburghNLP/xsum",),
        {"data_dir": subset or "default", "split": "validation", "revision": "refs/convert/parquet"},
    )
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

    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda *a, **k: datasets.Dataset.from_dict({"document": ["a", "b"], "title": ["x", "y"]}),
    )
    with pytest.raises(
        ValueError,
        match=re.escape("Column 'summary' not found in EdinburghNLP/xsum[train]; it has ['document', 'title']"),
    ):
        data_source.load_split(DataConfig(name="EdinburghNLP/xsum"), "train")
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda *a, **k: datasets.Dataset.from_dict({"document": ["a", "b", "c"], "summary": ["x", None, "z"]}),
    )
    with pytest.raises(
        ValueError, match=re.escape("EdinburghNLP/xsum[train]: row 2 has no string in column 'summary'")
    ):
        data_source.load_split(DataConfig(name="EdinburghNLP/xsum"), "train")
