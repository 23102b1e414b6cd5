"""The worker side of bench.data: each measurement (`today`, `cold`, `cache_hit`) runs in its own
fresh subprocess (`python -m bench.data --worker KIND ...`) and replies with its seconds, peak RSS
and a digest of the token ids it produced."""

from __future__ import annotations

import hashlib
import resource
import time

from bench.common import peak_rss_mib
from bench.data_corpus import MAX_SOURCE, MAX_TARGET, import_old

KINDS = ("today", "cold", "cache_hit")
AGREE_ROWS = 1000


def step_peak_rss_mib() -> float:
    """Peak RSS of this process or of the largest child it has waited for (see bench.data's docstring)."""
    return max(peak_rss_mib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def rows_digest(source, target, keep=None) -> tuple[int, str]:
    """(rows, digest of every kept row's length and int32 ids, source then target per row).
    `source`/`target`: anything indexable by row (lists of arrays, `TokenColumn`)."""
    import numpy as np

    h = hashlib.blake2b(digest_size=16)
    n = 0
    for i in range(len(source)):
        if keep is not None and not keep[i]:
            continue
        for a in (source[i], target[i]):
            a = np.ascontiguousarray(a, np.int32)
            h.update(np.int64(len(a)).tobytes())
            h.update(a.tobytes())
        n += 1
    return n, h.hexdigest()


def dump_head(source, target, keep, path: str, n: int = AGREE_ROWS) -> None:
    """The first `n` kept rows' ids, as flat values + offsets, into `path` (.npz)."""
    import numpy as np

    idx = [i for i in range(len(source)) if keep is None or keep[i]][:n]
    out = {}
    for name, col in (("source", source), ("target", target)):
        rows = [np.asarray(col[i], np.int32) for i in idx]
        out[f"{name}_values"] = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        out[f"{name}_offsets"] = np.cumsum([0] + [len(r) for r in rows])
    np.savez(path, **out)


def worker_today(corpus: str, old_path: str, tokenizer_path: str, ids_out: str) -> dict:
    old = import_old(old_path)
    from dq_jax.model import hf

    tokenizer = hf.load_tokenizer(tokenizer_path)
    cfg = old.DataConfig(train_files=(corpus,), max_source_length=MAX_SOURCE, max_target_length=MAX_TARGET)
    t0 = time.perf_counter()
    rows = old.load_rows(cfg, "train")
    t1 = time.perf_counter()
    data = old.tokenize(rows, tokenizer, cfg, "train")
    t2 = time.perf_counter()
    rss = step_peak_rss_mib()
    del rows
    keep = [bool(s.strip()) and bool(t.strip()) for s, t in data.texts]
    kept, digest = rows_digest(data.source, data.target, keep)
    dump_head(data.source, data.target, keep, ids_out)
    return dict(
        seconds=t2 - t0,
        peak_rss_mib=rss,
        phases={"load_rows": t1 - t0, "tokenize": t2 - t1},
        rows=len(data.source),
        rows_compared=kept,
        dropped_empty=len(keep) - kept,
        digest=digest,
        truncated_source=data.truncated_source,
        truncated_target=data.truncated_target,
    )


def _timed(phases: dict, name: str, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t

    return wrapper


def worker_new(corpus: str, cache_dir: str, tokenizer_path: str, num_proc: int, ids_out: str | None) -> dict:
    import datasets
    import pyarrow  # noqa: F401

    from dq_jax.data import source as data_source
    from dq_jax.data import token_cache, tokenization
    from dq_jax.data.config import DataConfig
    from dq_jax.model import hf

    tokenizer = hf.load_tokenizer(tokenizer_path)
    cfg = DataConfig(
        train_files=(corpus,),
        cache_dir=cache_dir,
        max_source_length=MAX_SOURCE,
        max_target_length=MAX_TARGET,
        num_proc=num_proc,
    )
    # Where the time goes: wrap (in this process only) the steps tokenized_split runs.
    phases: dict[str, float] = {}
    procs = []
    data_source.file_digest = _timed(phases, "hash files", data_source.file_digest)
    data_source.load_split = _timed(phases, "load_split", data_source.load_split)
    token_cache._build = _timed(phases, "build", token_cache._build)
    tokenize = token_cache.tokenize

    def tokenize_recording(ds, *a, **k):  # how many processes tokenize_split gives this split
        procs.append(tokenization.processes(cfg, len(ds)))
        return tokenize(ds, *a, **k)

    token_cache.tokenize = _timed(phases, "tokenize", tokenize_recording)
    datasets.Dataset.save_to_disk = _timed(phases, "save_to_disk", datasets.Dataset.save_to_disk)
    t0 = time.perf_counter()
    data = token_cache.tokenized_split(cfg, "train", tokenizer)
    seconds = time.perf_counter() - t0
    rss = step_peak_rss_mib()
    phases["open entry + rest"] = (
        seconds - phases.get("hash files", 0.0) - phases.get("load_split", 0.0) - phases.get("build", 0.0)
    )
    n, digest = rows_digest(data.source, data.target)
    if ids_out:
        dump_head(data.source, data.target, None, ids_out)
    return dict(
        seconds=seconds,
        peak_rss_mib=rss,
        phases=phases,
        num_proc=procs[0] if procs else None,
        rows=len(data),
        rows_compared=n,
        digest=digest,
        truncated_source=data.truncated_source,
        truncated_target=data.truncated_target,
    )
