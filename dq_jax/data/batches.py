"""Seq2seq batches from tokenized splits: length-bucketed, resumable, split across processes.

Rows come from `dq_jax.data.source` and are tokenized once by `dq_jax.data.token_cache` into
`dq_jax.data.columns`; here they are read batch by batch.

Training batches are numpy dicts of `[A, B, L]` arrays (A gradient-accumulation micro-batches
of B examples): `input_ids`, `attention_mask`, `decoder_input_ids`, `decoder_attention_mask`,
`labels` (-100 at padding). The order of epoch e depends only on (seed, e), so an iterator
is fully described by `{"epoch", "position"}`, which checkpoints store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from dq_jax.data.columns import Tokenized
from dq_jax.data.config import DataConfig


def fraction_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """The rows a `fraction` of an `n`-example split keeps: `round(fraction * n)` of them (at
    least one), drawn without replacement by `seed` alone and returned in file order, so the
    same (n, fraction, seed) always gives the same subset on every host. `fraction` is in (0, 1]
    (train/settings.py checks it)."""
    k = max(1, round(fraction * n))
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, n]).choice(n, size=k, replace=False))


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
    return (
        bucket(max(len(data.source[int(i)]) for i in idx), cfg.min_bucket, cfg.max_source_length),
        bucket(max(len(data.target[int(i)]) for i in idx), cfg.min_bucket, cfg.max_target_length),
    )


def collate(
    data: Tokenized,
    idx: np.ndarray,
    cfg: DataConfig,
    pad: int,
    start: int | None,
    model_type: str,
    lengths: tuple[int, int] | None = None,
) -> dict:
    """Examples `idx` -> padded arrays `[len(idx), L]` at bucketed lengths (or `lengths`, the
    whole global batch's, when `idx` is one process's share of it)."""
    src = [data.source[int(i)] for i in idx]
    tgt = [data.target[int(i)] for i in idx]
    ls, lt = lengths or batch_lengths(data, idx, cfg)
    ids = np.full((len(idx), ls), pad, np.int32)
    labels = np.full((len(idx), lt), pad, np.int32)
    for i, (s, t) in enumerate(zip(src, tgt)):
        ids[i, : len(s)], labels[i, : len(t)] = s, t
    dec = shift_right(labels, start, pad, model_type)
    dec_mask = (np.arange(lt)[None] < np.array([len(t) for t in tgt])[:, None]).astype(np.int32)
    return dict(
        input_ids=ids,
        attention_mask=(ids != pad).astype(np.int32),
        decoder_input_ids=dec,
        decoder_attention_mask=dec_mask,
        labels=np.where(dec_mask == 1, labels, -100).astype(np.int32),
    )


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

    def __init__(
        self,
        data: Tokenized,
        cfg: DataConfig,
        batch_size: int,
        accum: int,
        seed: int,
        pad: int,
        start: int | None,
        model_type: str,
        state: dict | None = None,
        rows: np.ndarray | None = None,
    ):
        self.data, self.cfg, self.batch, self.accum, self.seed = data, cfg, batch_size, accum, seed
        self.pad, self.start, self.model_type = pad, start, model_type
        self.rows = None if rows is None else np.asarray(rows)
        self.lengths = data.source.lengths()
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
        self.state = (
            {"epoch": self.state["epoch"] + 1, "position": 0}
            if self.state["position"] + 1 >= len(order)
            else {"epoch": self.state["epoch"], "position": self.state["position"] + 1}
        )
        lengths = batch_lengths(self.data, idx, self.cfg)
        local = idx.reshape(self.accum, self.batch)
        if self.rows is not None:
            local = local[:, self.rows]
        out = collate(self.data, local.reshape(-1), self.cfg, self.pad, self.start, self.model_type, lengths)
        return {k: v.reshape(*local.shape, *v.shape[1:]) for k, v in out.items()}


def eval_batches(
    data: Tokenized, cfg: DataConfig, batch_size: int, pad: int, start: int | None, model_type: str
) -> Iterator[tuple[np.ndarray, dict]]:
    """Length-sorted batches covering every example once: yields (example indices, batch); the
    last batch is filled up by repeating its first example (callers drop those rows)."""
    order = np.argsort(data.source.lengths(), kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
        yield idx, collate(data, padded, cfg, pad, start, model_type)


@dataclasses.dataclass(frozen=True)
class Batching:
    """How one model's batches are built from tokenized rows: the data's lengths and buckets, and
    the model's pad token, decoder start token and type (mBART starts with the language code)."""

    cfg: DataConfig
    pad: int
    start: int | None
    model_type: str

    def train(
        self, data: Tokenized, batch_size: int, accum: int, seed: int, rows: np.ndarray | None = None
    ) -> TrainIterator:
        return TrainIterator(data, self.cfg, batch_size, accum, seed, self.pad, self.start, self.model_type, rows=rows)

    def eval(self, data: Tokenized, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
        return eval_batches(data, self.cfg, batch_size, self.pad, self.start, self.model_type)
