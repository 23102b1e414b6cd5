"""Each split tokenized once (`tokenization`) and kept: later jobs and sweep points reuse it.

The cache key covers everything the token ids depend on: the rows (local files by content hash,
so a copy of a file elsewhere hits too; hub data by name, subset, revision, split and its
`datasets` fingerprint), the tokenizer (its full serialization), the columns, the max lengths,
`max_examples` and the mBART languages. An entry is a `datasets` `save_to_disk` directory,
memory-mapped when loaded, plus `meta.json` with the truncation counts; it is written under a
temporary name and renamed into place, so an interrupted or concurrent job never leaves half an
entry.

The cache lives in `data.cache_dir`, else `$DQ_JAX_CACHE`, else `~/.cache/dq_jax`, under
`tokenized/`. Deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

from dq_jax.data import source as data_source
from dq_jax.data.columns import TextColumn, TokenColumn, Tokenized
from dq_jax.data.config import DataConfig
from dq_jax.data.tokenization import Encoder, tokenize
from dq_jax.utils import user_cache

log = logging.getLogger(__name__)
FORMAT = 1  # bump when an entry's layout or the tokenization rule changes


def cache_root(cfg: DataConfig) -> str:
    return os.path.join(cfg.cache_dir, "tokenized") if cfg.cache_dir else user_cache.path("tokenized")


def tokenizer_identity(tokenizer) -> str:
    """A digest of everything that decides the tokenizer's ids."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer serializes its whole pipeline
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
        for name in getattr(tokenizer, "vocab_files_names", {}):
            path = os.path.join(str(tokenizer.name_or_path), tokenizer.vocab_files_names[name])
            if os.path.isfile(path):
                h.update(data_source.file_digest(path).encode())
    h.update(json.dumps([tokenizer.all_special_tokens, tokenizer.all_special_ids]).encode())
    return h.hexdigest()


def cache_key(cfg: DataConfig, split: str, origin: data_source.Origin, tokenizer) -> str:
    parts = {
        "format": FORMAT,
        "split": split,
        "rows": list(origin.identity),
        "tokenizer": tokenizer_identity(tokenizer),
        "columns": [cfg.source_column, cfg.target_column],
        "max_lengths": [cfg.max_source_length, cfg.max_target_length],
        "max_examples": cfg.max_examples,
        "langs": [cfg.src_lang, cfg.tgt_lang],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _build(cfg: DataConfig, split: str, tokenizer, ds, key: str, entry: str) -> None:
    """Tokenizes `ds` into the cache entry `entry` (written aside, then renamed into place)."""
    import pyarrow.compute as pc

    work = f"{entry}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "map"))
    try:
        out = tokenize(ds, Encoder.of(tokenizer), cfg, split, key, os.path.join(work, "map"))
        meta = {
            "rows": len(out),
            "truncated_source": pc.sum(out.data.column("source_cut")).as_py() or 0,
            "truncated_target": pc.sum(out.data.column("target_cut")).as_py() or 0,
        }
        out.remove_columns(["source_cut", "target_cut"]).save_to_disk(os.path.join(work, "dataset"))
        del out
        shutil.rmtree(os.path.join(work, "map"))
        with open(os.path.join(work, "meta.json"), "w") as f:
            json.dump(meta, f)
        if os.path.isdir(entry) and not os.path.exists(os.path.join(entry, "meta.json")):
            shutil.rmtree(entry)  # not written by this module (entries appear whole, by rename)
        try:
            os.rename(work, entry)
        except OSError:  # another job finished the same entry first: theirs is identical
            if not os.path.exists(os.path.join(entry, "meta.json")):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tokenized_split(cfg: DataConfig, split: str, tokenizer) -> Tokenized:
    """`split` tokenized: from the cache when an entry matches, else tokenized and cached."""
    import datasets

    if cfg.src_lang:
        tokenizer.src_lang, tokenizer.tgt_lang = cfg.src_lang, cfg.tgt_lang
    ds = None
    if data_source.split_files(cfg, split):  # local rows: the key needs no loading
        origin = data_source.origin(cfg, split)
    else:  # hub rows: loading (from the `datasets` cache once downloaded) gives their fingerprint
        ds, origin = data_source.load_split(cfg, split)
    key = cache_key(cfg, split, origin, tokenizer)
    entry = os.path.join(cache_root(cfg), key)
    if os.path.exists(os.path.join(entry, "meta.json")):
        log.info("%s: tokenization cache hit (%s): %s", split, origin.description, entry)
    else:
        t0 = time.perf_counter()
        if ds is None:
            ds, origin = data_source.load_split(cfg, split)
        os.makedirs(cache_root(cfg), exist_ok=True)
        _build(cfg, split, tokenizer, ds, key, entry)
        log.info("%s: tokenized %d rows in %.1f s into %s", split, len(ds), time.perf_counter() - t0, entry)
    with open(os.path.join(entry, "meta.json")) as f:
        meta = json.load(f)
    table = datasets.load_from_disk(os.path.join(entry, "dataset")).data
    out = Tokenized(
        TokenColumn.from_arrow(table.column("source_ids")),
        TokenColumn.from_arrow(table.column("target_ids")),
        TextColumn(table.column("reference")),
        meta["truncated_source"],
        meta["truncated_target"],
    )
    _report(out, cfg, split)
    return out


def _report(data: Tokenized, cfg: DataConfig, split: str) -> None:
    n = len(data)
    if data.truncated_source == n and n > 1:
        log.warning(
            "%s: all %d sources are longer than max_source_length=%d and were truncated.",
            split,
            n,
            cfg.max_source_length,
        )
    log.info(
        "%s: %d examples; truncated %d sources (> %d tokens) and %d targets (> %d tokens)",
        split,
        n,
        data.truncated_source,
        cfg.max_source_length,
        data.truncated_target,
        cfg.max_target_length,
    )
