"""Seq2seq data: rows from the hub or local files, tokenized, length-bucketed, resumable.

Training batches are numpy dicts of `[A, B, L]` arrays (A gradient-accumulation micro-batches
of B examples): `input_ids`, `attention_mask`, `decoder_input_ids`, `decoder_attention_mask`,
`labels` (-100 at padding). The order of epoch e depends only on (seed, e), so an iterator
is fully described by `{"epoch", "position"}`, which checkpoints store.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str | None = None  # a `datasets` hub name, or None for local files
    subset: str | None = None
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


@dataclasses.dataclass
class Tokenized:
    source: list[np.ndarray]
    target: list[np.ndarray]
    texts: list[tuple[str, str]]
    truncated_source: int = 0
    truncated_target: int = 0


def _read_local(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Data file {path} does not exist; check data.*_files in the config.")
    ext = path.rsplit(".", 1)[-1].lower()
    try:
        if ext in ("jsonl", "json"):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if ext == "json" and text.lstrip().startswith("["):
                return json.loads(text)
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if ext == "csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if ext == "parquet":
            import pyarrow.parquet as pq
            return pq.read_table(path).to_pylist()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 text (byte {e.start}); re-encode it as UTF-8.") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON Lines: line {e.lineno}: {e.msg}.") from e
    raise ValueError(f"{path}: unsupported file type .{ext}; use jsonl, json, csv or parquet.")


def load_rows(cfg: DataConfig, split: str) -> list[dict]:
    """Rows of one split as dicts, with the source and target columns checked."""
    files = getattr(cfg, f"{split}_files")
    if files:
        rows, origin = [r for f in files for r in _read_local(f)], ", ".join(files)
    elif cfg.name:
        import datasets
        rows, origin = list(datasets.load_dataset(cfg.name, cfg.subset, split=split)), f"{cfg.name}[{split}]"
    else:
        raise ValueError(f"No data for split {split!r}: set data.name or data.{split}_files.")
    if not rows:
        raise ValueError(f"The {split} split ({origin}) is empty.")
    for col in (cfg.source_column, cfg.target_column):
        if col not in rows[0]:
            raise ValueError(f"Column {col!r} not found in {origin}; it has {sorted(rows[0])}. "
                             "Set data.source_column / data.target_column.")
    return rows[: cfg.max_examples] if cfg.max_examples else rows


def _truncate(ids: list[int], max_len: int, eos: int) -> tuple[list[int], bool]:
    if len(ids) <= max_len:
        return ids, False
    return ids[: max_len - 1] + [eos], True


def tokenize(rows: list[dict], tokenizer, cfg: DataConfig, split: str = "") -> Tokenized:
    src_texts = [str(r[cfg.source_column] or "") for r in rows]
    tgt_texts = [str(r[cfg.target_column] or "") for r in rows]
    if cfg.src_lang:
        tokenizer.src_lang, tokenizer.tgt_lang = cfg.src_lang, cfg.tgt_lang
    src = tokenizer(src_texts)["input_ids"]
    tgt = tokenizer(text_target=tgt_texts)["input_ids"]
    out = Tokenized([], [], list(zip(src_texts, tgt_texts)))
    eos = tokenizer.eos_token_id
    for s, t in zip(src, tgt):
        s, cut_s = _truncate(list(s), cfg.max_source_length, eos)
        t, cut_t = _truncate(list(t), cfg.max_target_length, eos)
        out.source.append(np.asarray(s, np.int32))
        out.target.append(np.asarray(t, np.int32))
        out.truncated_source += cut_s
        out.truncated_target += cut_t
    n = len(rows)
    if out.truncated_source == n and n > 1:
        log.warning("%s: all %d sources are longer than max_source_length=%d and were truncated.",
                    split, n, cfg.max_source_length)
    log.info("%s: %d examples; truncated %d sources (> %d tokens) and %d targets (> %d tokens)", split, n,
             out.truncated_source, cfg.max_source_length, out.truncated_target, cfg.max_target_length)
    return out


def bucket(n: int, min_bucket: int, cap: int) -> int:
    """Smallest power of two >= max(n, min_bucket), capped at `cap`."""
    return min(cap, max(min_bucket, 1 << max(n - 1, 0).bit_length()))


def shift_right(labels: np.ndarray, start: int | None, pad: int, model_type: str) -> np.ndarray:
    """Decoder inputs from labels `[B, T]`: BART prepends the decoder start token; mBART moves
    each row's last non-pad token (the language code) to the front, as HF does."""
    out = np.full_like(labels, pad)
    out[:, 1:] = labels[:, :-1]
    if model_type == "mbart":
        last = (labels != pad).sum(1) - 1
        out[:, 0] = labels[np.arange(len(labels)), last]
    else:
        out[:, 0] = start
    return out


def batch_lengths(data: Tokenized, idx: np.ndarray, cfg: DataConfig) -> tuple[int, int]:
    """Bucketed (source, target) lengths of a batch of examples `idx`."""
    return (bucket(max(len(data.source[i]) for i in idx), cfg.min_bucket, cfg.max_source_length),
            bucket(max(len(data.target[i]) for i in idx), cfg.min_bucket, cfg.max_target_length))


def collate(data: Tokenized, idx: np.ndarray, cfg: DataConfig, pad: int, start: int | None,
            model_type: str, lengths: tuple[int, int] | None = None) -> dict:
    """Examples `idx` -> padded arrays `[len(idx), L]` at bucketed lengths (or `lengths`, the
    whole global batch's, when `idx` is one process's share of it)."""
    src = [data.source[i] for i in idx]
    tgt = [data.target[i] for i in idx]
    ls, lt = lengths or batch_lengths(data, idx, cfg)
    ids = np.full((len(idx), ls), pad, np.int32)
    labels = np.full((len(idx), lt), pad, np.int32)
    for i, (s, t) in enumerate(zip(src, tgt)):
        ids[i, : len(s)], labels[i, : len(t)] = s, t
    dec = shift_right(labels, start, pad, model_type)
    dec_mask = (np.arange(lt)[None] < np.array([len(t) for t in tgt])[:, None]).astype(np.int32)
    return dict(input_ids=ids, attention_mask=(ids != pad).astype(np.int32), decoder_input_ids=dec,
                decoder_attention_mask=dec_mask, labels=np.where(dec_mask == 1, labels, -100).astype(np.int32))


def epoch_order(lengths: np.ndarray, batch: int, seed: int, epoch: int) -> np.ndarray:
    """Example indices of one epoch as `[num_batches, batch]`: shuffled, then sorted by length
    inside windows of 50 batches (similar lengths share a batch), batches shuffled again.
    The last incomplete batch is dropped."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    window = 50 * batch
    chunks = [c[np.argsort(lengths[c], kind="stable")] for c in np.array_split(perm, max(1, -(-len(perm) // window)))]
    order = np.concatenate(chunks)
    n = len(order) // batch
    if n == 0:
        raise ValueError(f"The training split has {len(lengths)} examples, fewer than one batch of {batch}.")
    batches = order[: n * batch].reshape(n, batch)
    return batches[rng.permutation(n)]


class TrainIterator:
    """Endless resumable iterator of `[A, B, L]` training batches.

    `rows`: the rows of each `B`-row micro-batch this process loads (`sharding.process_rows`);
    it then yields `[A, len(rows), L]`, padded to the lengths of the whole global batch. The
    order of examples depends on the seed only, so every process agrees on the global batch."""

    def __init__(self, data: Tokenized, cfg: DataConfig, batch_size: int, accum: int, seed: int,
                 pad: int, start: int | None, model_type: str, state: dict | None = None,
                 rows: np.ndarray | None = None):
        self.data, self.cfg, self.batch, self.accum, self.seed = data, cfg, batch_size, accum, seed
        self.pad, self.start, self.model_type = pad, start, model_type
        self.rows = None if rows is None else np.asarray(rows)
        self.lengths = np.array([len(s) for s in data.source])
        self.state = dict(state or {"epoch": 0, "position": 0})
        self._order = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.lengths) // (self.batch * self.accum)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._order is None or self._order[0] != self.state["epoch"]:
            order = epoch_order(self.lengths, self.batch * self.accum, self.seed, self.state["epoch"])
            self._order = (self.state["epoch"], order)
        order = self._order[1]
        idx = order[self.state["position"]]
        self.state = ({"epoch": self.state["epoch"] + 1, "position": 0} if self.state["position"] + 1 >= len(order)
                      else {"epoch": self.state["epoch"], "position": self.state["position"] + 1})
        lengths = batch_lengths(self.data, idx, self.cfg)
        local = idx.reshape(self.accum, self.batch)
        if self.rows is not None:
            local = local[:, self.rows]
        out = collate(self.data, local.reshape(-1), self.cfg, self.pad, self.start, self.model_type, lengths)
        return {k: v.reshape(*local.shape, *v.shape[1:]) for k, v in out.items()}


def eval_batches(data: Tokenized, cfg: DataConfig, batch_size: int, pad: int, start: int | None,
                 model_type: str) -> Iterator[tuple[np.ndarray, dict]]:
    """Length-sorted batches covering every example once: yields (example indices, batch); the
    last batch is filled up by repeating its first example (callers drop those rows)."""
    order = np.argsort([len(s) for s in data.source], kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
        yield idx, collate(data, padded, cfg, pad, start, model_type)
