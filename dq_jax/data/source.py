"""Where a split's rows come from: local files or the hub, loaded through `datasets`, every row
checked.

`check_local_files` runs before anything downloads or compiles: each file exists, is readable
and has the source and target columns. `load_split` then loads a split as a `datasets.Dataset`
(memory-mapped Arrow) of exactly the two columns, as non-empty strings: a missing, null or
non-string value is an error naming the file, the line (or row) and the column; rows whose
source or target is empty are dropped and counted.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os

from dq_jax.data.config import SPLITS, DataConfig

log = logging.getLogger(__name__)
BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}  # `datasets` packaged builders
PARQUET_REVISION = "refs/convert/parquet"  # the hub's parquet conversion of a dataset
SCRIPT_REFUSED = "Dataset scripts are no longer supported"  # datasets >= 4 on a script-only dataset


@dataclasses.dataclass(frozen=True)
class Origin:
    """What a split's rows are, for messages and for the tokenization cache key."""

    description: str  # "a.jsonl, b.jsonl" or "EdinburghNLP/xsum[train]"
    identity: tuple  # content hashes of local files; hub name, subset, revision, split, fingerprint


def split_files(cfg: DataConfig, split: str) -> tuple[str, ...]:
    return getattr(cfg, f"{split}_files")


def _builder(path: str) -> str:
    ext = path.rsplit(".", 1)[-1].lower()
    if ext not in BUILDERS:
        raise ValueError(f"{path}: unsupported file type .{ext}; use jsonl, json, csv or parquet.")
    return BUILDERS[ext]


def _first_row_columns(path: str) -> list[str]:
    """The columns of a local file, read from its first row (its header, its schema)."""
    builder = _builder(path)
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as e:  # pyarrow's messages do not name the file
            raise ValueError(f"{path} is not a readable parquet file ({e}).") from e
    with open(path, encoding="utf-8", newline="") as f:
        if builder == "csv":
            return next(csv.reader(f), [])
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("["):  # one JSON array: its first item needs the whole text
                f.seek(0)
                rows = json.load(f)
                return sorted(rows[0]) if rows and isinstance(rows[0], dict) else []
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON Lines: line {number}: {e.msg}.") from e
            return sorted(row) if isinstance(row, dict) else []
    return []


def check_local_files(cfg: DataConfig, splits: tuple[str, ...] = SPLITS) -> None:
    """Every local file of `splits` exists, is readable, is a supported type and has both columns.
    Cheap (first row only): runs before any download, tokenization or compile."""
    for split in splits:
        files = split_files(cfg, split)
        if not files and not cfg.name:
            raise ValueError(f"No data for split {split!r}: set data.name or data.{split}_files.")
        for path in files:
            _check_file(path, split, (cfg.source_column, cfg.target_column))


def _check_file(path: str, split: str, columns: tuple[str, str]) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Data file {path} does not exist; check data.{split}_files in the config.")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"Data file {path} is not readable; check its permissions.")
    try:
        found = _first_row_columns(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 text (byte {e.start}); re-encode it as UTF-8.") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: line {e.lineno}: {e.msg}.") from e
    if not found:
        raise ValueError(f"The {split} split ({path}) is empty.")
    for col in columns:
        if col not in found:
            raise ValueError(
                f"Column {col!r} not found in {path}; it has {sorted(found)}. "
                "Set data.source_column / data.target_column."
            )


def file_digest(path: str) -> str:
    """blake2b of a file's bytes: the cache key of its rows, wherever the file lives."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def origin(cfg: DataConfig, split: str, fingerprint: str = "") -> Origin:
    files = split_files(cfg, split)
    if files:
        return Origin(", ".join(files), tuple(file_digest(p) for p in files))
    return Origin(f"{cfg.name}[{split}]", (cfg.name, cfg.subset, cfg.revision, split, fingerprint))


def _load_hub(cfg: DataConfig, split: str):
    import datasets

    try:
        return datasets.load_dataset(cfg.name, cfg.subset, split=split, revision=cfg.revision)
    except RuntimeError as e:
        if SCRIPT_REFUSED not in str(e) or cfg.revision:
            raise
    log.warning(
        "%s has only a loading script, which datasets no longer runs; loading the hub's parquet "
        "conversion (revision %s) instead.",
        cfg.name,
        PARQUET_REVISION,
    )
    return datasets.load_dataset(cfg.name, data_dir=cfg.subset or "default", split=split, revision=PARQUET_REVISION)


def _load_file(path: str, columns: tuple[str, str]):
    import datasets

    try:
        # csv cells are text: no number inference, and an empty cell is "" (dropped like an empty
        # string elsewhere); only a row with too few cells leaves a null
        options = {}
        if _builder(path) == "csv":
            text = datasets.Value("string")
            options = dict(
                features=datasets.Features(dict.fromkeys(_first_row_columns(path), text)), keep_default_na=False
            )
        ds = datasets.load_dataset(_builder(path), data_files=[path], split="train", **options)
    except Exception as e:  # pyarrow/datasets report bad rows without a line: find it and say where
        _diagnose(path, columns)
        raise ValueError(f"{path} could not be read: {e}") from e
    _check_values(ds, path, columns)
    # one string type for every file (csv columns load as large_string), so files concatenate
    return ds.select_columns(list(columns)).cast(datasets.Features({c: datasets.Value("string") for c in columns}))


def _is_string_column(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _check_values(ds, origin_name: str, columns: tuple[str, str]) -> None:
    """Each column present, typed string, with no nulls; else the first bad row, named."""
    import pyarrow.compute as pc

    for col in columns:
        if col not in ds.column_names:
            raise ValueError(
                f"Column {col!r} not found in {origin_name}; it has {sorted(ds.column_names)}. "
                "Set data.source_column / data.target_column."
            )
        nulls = ds.data.column(col).null_count
        if not _is_string_column(ds.features[col]) or nulls:
            if os.path.isfile(origin_name):
                _diagnose(origin_name, columns)
            bad = pc.index(pc.is_null(ds.data.column(col)), True).as_py() if nulls else 0
            raise ValueError(
                f"{origin_name}: row {bad + 1} has no string in column {col!r} "
                f"(the column's type is {ds.features[col]}); every row needs a text."
            )


def _rows_with_lines(path: str):
    """(line or row label, row) for each row of a local file, in plain Python: the error path only."""
    builder = _builder(path)
    if builder == "parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"row {i + 1}", row
        return
    with open(path, encoding="utf-8", newline="") as f:
        if builder == "csv":
            reader = csv.DictReader(f)
            for row in reader:
                yield f"line {reader.line_num}", row
            return
        text = f.read()
    if text.lstrip().startswith("["):
        for i, row in enumerate(json.loads(text)):
            yield f"item {i + 1}", row
        return
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON Lines: line {n}: {e.msg}.") from e


def _diagnose(path: str, columns: tuple[str, str]) -> None:
    """Raises a ValueError naming the first row of `path` with a missing, null or non-string
    source or target (or the encoding problem); returns if it finds none."""
    try:
        for where, row in _rows_with_lines(path):
            if not isinstance(row, dict):
                raise ValueError(f"{path}: {where} is not an object with columns; each row needs {list(columns)}.")
            for col in columns:
                if col not in row:
                    raise ValueError(f"{path}: {where} has no {col!r} column; every row needs {list(columns)}.")
                if row[col] is None:
                    raise ValueError(f"{path}: {where} has a null {col!r}; every row needs a text there.")
                if not isinstance(row[col], str):
                    raise ValueError(
                        f"{path}: {where} has {row[col]!r:.40} ({type(row[col]).__name__}) as "
                        f"{col!r}; it must be a string."
                    )
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 text (byte {e.start}); re-encode it as UTF-8.") from e


def _drop_empty(ds, cfg: DataConfig, description: str, split: str):
    """Rows whose source or target is empty (or whitespace) dropped, counted in the log."""
    import pyarrow.compute as pc

    empty = {
        col: pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ds.data.column(col))), 0)
        for col in (cfg.source_column, cfg.target_column)
    }
    counts = {col: pc.sum(e).as_py() or 0 for col, e in empty.items()}
    for col, n in counts.items():
        if n == len(ds):
            raise ValueError(
                f"Every {col!r} in the {split} split ({description}) is empty; check "
                f"data.{'source' if col == cfg.source_column else 'target'}_column."
            )
    if not any(counts.values()):
        return ds
    keep = pc.invert(pc.or_(*empty.values()))
    log.warning(
        "%s: dropped %d rows with an empty %r and %d with an empty %r (%s).",
        split,
        counts[cfg.source_column],
        cfg.source_column,
        counts[cfg.target_column],
        cfg.target_column,
        description,
    )
    import numpy as np

    return ds.select(np.flatnonzero(keep.to_numpy(zero_copy_only=False)))


def load_split(cfg: DataConfig, split: str):
    """One split as a `datasets.Dataset` with the source and target columns only, every value a
    non-empty string, the first `max_examples` rows when set; and its `Origin`."""
    import datasets

    columns = (cfg.source_column, cfg.target_column)
    files = split_files(cfg, split)
    if files:
        for path in files:
            _check_file(path, split, columns)
        ds = datasets.concatenate_datasets([_load_file(p, columns) for p in files])
    elif cfg.name:
        ds = _load_hub(cfg, split)
        _check_values(ds, f"{cfg.name}[{split}]", columns)
        ds = ds.select_columns(list(columns)).cast(datasets.Features({c: datasets.Value("string") for c in columns}))
    else:
        raise ValueError(f"No data for split {split!r}: set data.name or data.{split}_files.")
    where = origin(cfg, split, getattr(ds, "_fingerprint", ""))
    if len(ds) == 0:
        raise ValueError(f"The {split} split ({where.description}) is empty.")
    ds = _drop_empty(ds, cfg, where.description, split)
    if cfg.max_examples:
        ds = ds.select(range(min(cfg.max_examples, len(ds))))
    return ds, where
