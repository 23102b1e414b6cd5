"""Rows and the files that hold them, for the tests of dq_jax.data.source (test_data_source_*)."""

import csv
import json

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
