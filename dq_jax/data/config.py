"""Where a run's rows come from and how long its sequences may be: `DataConfig`, and the splits."""

from __future__ import annotations

import dataclasses

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str | None = None  # a `datasets` hub name, or None for local files
    subset: str | None = None
    revision: str | None = None  # of the hub dataset (None: its main branch)
    train_files: tuple[str, ...] = ()
    validation_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    source_column: str = "document"
    target_column: str = "summary"
    max_source_length: int = 1024
    max_target_length: int = 128
    max_examples: int | None = None  # per split, for quick runs
    min_bucket: int = 16  # batches pad to a power of two >= this (few shapes, few compiles)
    src_lang: str | None = None  # mBART language codes, e.g. en_XX -> ro_RO
    tgt_lang: str | None = None
    cache_dir: str | None = None  # tokenized splits (None: $DQ_JAX_CACHE or ~/.cache/dq_jax)
    num_proc: int = 0  # tokenization processes (0: the machine's cores)
