"""Texts to token ids, exactly the tokenizer's, fast: a split's rows become Arrow token columns.

`Encoder` encodes with `tiktoken` where the tokenizer is plain byte-level BPE (`byte_level_bpe`)
and from a prefix of a long text where that provably gives the same ids; truncation keeps each
row's special suffix (BART's `</s>`, mBART's `</s> lang_code`). A large split is encoded by
several spawned processes (`processes`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
from typing import Any

import numpy as np

from dq_jax.data.byte_level_bpe import ByteLevelBPE, IdRows
from dq_jax.data.config import DataConfig

# Below this many rows per worker, one process is faster than several: starting a worker
# (spawn, imports, the tokenizer) costs seconds, and `tiktoken` encodes ~6000 XSum rows a second.
_MIN_ROWS_PER_PROC = 15000
# Texts longer than this many characters per kept token are encoded from a prefix (see
# `_prefix_cut`): English runs ~4.5 characters per BART token, so at 5 nearly every cut prefix
# still yields more tokens than are kept, and the few that do not are encoded again whole.
_CUT_CHARS_PER_TOKEN = 5


def _around(full: list[int], bare: list[int]) -> tuple[list[int], list[int]] | None:
    """The special tokens before and after a text's own ids `bare` in its encoding `full`
    (None when `bare` is not in it)."""
    start = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
    return None if start is None else (full[:start], full[start + len(bare) :])


def special_suffix(tokenizer) -> int:
    """How many special tokens the tokenizer appends after the text (BART: `</s>`; mBART:
    `</s> lang_code`): truncation keeps them."""
    bare = tokenizer("summary", add_special_tokens=False)["input_ids"]
    return len(_around(tokenizer("summary")["input_ids"], bare)[1])


def _truncated(rows: IdRows, max_len: int, suffix: int):
    """(Arrow list<int32> of the rows cut to `max_len` keeping their special suffix, [N] bool cut)."""
    import pyarrow as pa

    lengths = rows.lengths()
    cut = lengths > max_len
    kept = np.minimum(lengths, max_len)
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(kept, out=offsets[1:])
    # Output position -> (row r, place j in it) -> the place it comes from: the head as is, the
    # last `suffix` places of a cut row from the row's end.
    r = np.repeat(np.arange(len(rows)), kept)
    j = np.arange(int(offsets[-1])) - offsets[:-1][r]
    source = rows.offsets[:-1][r] + j + np.where(cut[r] & (j >= max_len - suffix), (lengths - max_len)[r], 0)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(rows.values[source])), cut


def _token_ids(tokenizer, texts: list[str], target: bool) -> IdRows:
    """`tokenizer(texts)["input_ids"]` (or `text_target=texts`), through the Rust backend's
    `encode_batch_fast` when the tokenizer has one in its plain state (no truncation or padding
    left set): it skips the character offsets nothing here reads, a fifth of the source encoding
    time and half of the targets'. Targets are encoded in the tokenizer's target mode, switched
    on and back exactly as its `__call__(text_target=...)` does (mBART: the target language's
    special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is None
        or not hasattr(backend, "encode_batch_fast")
        or backend.truncation is not None
        or backend.padding is not None
    ):
        return IdRows.from_lists(tokenizer(text_target=texts)["input_ids"] if target else tokenizer(texts)["input_ids"])
    switch = target and hasattr(tokenizer, "_switch_to_target_mode")
    if switch:  # sets the backend's post-processor to the target's special tokens
        tokenizer._switch_to_target_mode()
    try:
        return IdRows.from_lists([e.ids for e in backend.encode_batch_fast(texts)])
    finally:
        if switch and hasattr(tokenizer, "_switch_to_input_mode"):
            tokenizer._switch_to_input_mode()


def prefix_exact(tokenizer) -> bool:
    """Whether this tokenizer's ids for a text cut just before a space (that follows a
    non-space) are a prefix of the whole text's, special tokens aside. True for byte-level BPE
    with the GPT-2 split pattern (BART, RoBERTa, GPT-2) and no normalizer: none of that
    pattern's pieces (` ?\\p{L}+`, ` ?\\p{N}+`, ` ?[^\\s\\p{L}\\p{N}]+`, `\\s+`, the contractions)
    holds a non-space followed by a space, so every piece ends at or starts after the cut, and
    BPE then encodes each piece on its own. Special tokens containing a space could straddle
    the cut, so their presence rules it out. Other tokenizers (sentencepiece's normalizers,
    mBART) are always encoded whole."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    return (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not any(any(ch.isspace() for ch in t["content"]) for t in spec.get("added_tokens", []))
    )


def _prefix_cut(text: str, limit: int) -> str:
    """`text` cut at the last space at or before `limit` that follows a non-space (the text
    itself when it is not longer, or has no such space). `str.isspace` covers every character
    the split pattern's `\\s` matches, so the character before the cut is no `\\s` either."""
    if len(text) <= limit:
        return text
    i = text.rfind(" ", 1, limit + 1)
    while i > 0 and text[i - 1].isspace():
        i = text.rfind(" ", 1, i)
    return text[:i] if i > 0 else text


@dataclasses.dataclass(frozen=True)
class Encoder:
    """How texts become the tokenizer's token ids here: through `tiktoken` when the tokenizer
    is plain byte-level BPE (`byte_level_bpe`; `bpe` is then set, with the special tokens the
    tokenizer puts around a text in input and in target mode), else through the tokenizer; and
    from a prefix of a long text when that gives the same ids (`prefix_exact`)."""

    tokenizer: Any
    bpe: ByteLevelBPE | None
    frames: tuple[tuple[list[int], list[int]], ...]  # (input, target) mode: (prefix, suffix) ids
    cut_prefix: bool
    suffix: int  # `special_suffix`: the special tokens truncation keeps at a row's end

    @classmethod
    def of(cls, tokenizer) -> Encoder:
        bpe = ByteLevelBPE.from_tokenizer(tokenizer)
        frames = ()
        if bpe is not None:
            bare = bpe.encode(["summary"]).row(0).tolist()
            for target in (False, True):
                frame = _around(_token_ids(tokenizer, ["summary"], target).row(0).tolist(), bare)
                if frame is None:  # the post-processor changed the text's own ids: not plain BPE
                    bpe, frames = None, ()
                    break
                frames += (frame,)
        return cls(tokenizer, bpe, frames, prefix_exact(tokenizer), special_suffix(tokenizer))

    def ids(self, texts: list[str], target: bool) -> IdRows:
        """`_token_ids(self.tokenizer, texts, target)`, by `tiktoken` where it gives the same."""
        if self.bpe is None:
            return _token_ids(self.tokenizer, texts, target)
        handled = self.bpe.handled(texts)
        out = self.bpe.encode([t if h else "" for t, h in zip(texts, handled)]).framed(*self.frames[target])
        rest = np.flatnonzero(~handled).tolist()  # texts holding a special token: the tokenizer's own
        return out.replaced(rest, _token_ids(self.tokenizer, [texts[i] for i in rest], target)) if rest else out

    def kept_ids(self, texts: list[str], target: bool, max_len: int) -> IdRows:
        """`ids(texts, target)`, exact wherever truncation to `max_len` reads them. With
        `cut_prefix`, a long text is encoded from a prefix of about `_CUT_CHARS_PER_TOKEN *
        max_len` characters: when that prefix gives more than `max_len` ids, its first
        `max_len - suffix` ids are the whole text's and the row is truncated either way;
        otherwise the whole text is encoded again. Long articles are mostly text that truncation
        throws away, and encoding is the tokenization's cost."""
        if not self.cut_prefix:
            return self.ids(texts, target)
        cut = [_prefix_cut(t, _CUT_CHARS_PER_TOKEN * max_len) for t in texts]
        ids = self.ids(cut, target)
        lengths = ids.lengths()
        again = [i for i, (t, c) in enumerate(zip(texts, cut)) if c is not t and lengths[i] <= max_len]
        return ids.replaced(again, self.ids([texts[i] for i in again], target)) if again else ids


def _encode(batch: dict, encoder: Encoder, cfg: DataConfig):
    """A batch of rows -> an Arrow table of token ids, truncation flags and the reference texts
    (`datasets.map`; a table, so the ids go to Arrow as flat arrays, not as Python lists)."""
    import pyarrow as pa

    src, cut_s = _truncated(
        encoder.kept_ids(batch[cfg.source_column], False, cfg.max_source_length), cfg.max_source_length, encoder.suffix
    )
    tgt, cut_t = _truncated(
        encoder.kept_ids(batch[cfg.target_column], True, cfg.max_target_length), cfg.max_target_length, encoder.suffix
    )
    return pa.table(
        {
            "source_ids": src,
            "target_ids": tgt,
            "source_cut": cut_s,
            "target_cut": cut_t,
            "reference": pa.array(batch[cfg.target_column], pa.string()),
        }
    )


def _features():
    import datasets

    ids = datasets.List(datasets.Value("int32"))
    return datasets.Features(
        {
            "source_ids": ids,
            "target_ids": ids,
            "source_cut": datasets.Value("bool"),
            "target_cut": datasets.Value("bool"),
            "reference": datasets.Value("string"),
        }
    )


def _map_kwargs(ds, encoder: Encoder, cfg: DataConfig) -> dict:
    return dict(
        batched=True,
        batch_size=1000,
        remove_columns=ds.column_names,
        features=_features(),
        fn_kwargs=dict(encoder=encoder, cfg=cfg),
    )


def _tokenize_shard(shard, encoder: Encoder, cfg: DataConfig, path: str, fingerprint: str, desc: str) -> str:
    """One worker's share, written to `path` (runs in a spawned process)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: its rayon threads would oversubscribe
    shard.map(_encode, cache_file_name=path, new_fingerprint=fingerprint, desc=desc, **_map_kwargs(shard, encoder, cfg))
    return path


def processes(cfg: DataConfig, rows: int) -> int:
    """How many processes tokenize a split of `rows` rows: `data.num_proc` (0: every core), at
    most one per `_MIN_ROWS_PER_PROC` rows."""
    return max(1, min(cfg.num_proc or os.cpu_count() or 1, rows // _MIN_ROWS_PER_PROC))


def tokenize(ds, encoder: Encoder, cfg: DataConfig, split: str, key: str, work: str):
    """`ds` tokenized into Arrow files under `work`, by `data.num_proc` processes when the split
    is large enough to pay for their start-up."""
    import datasets

    procs = processes(cfg, len(ds))
    if procs == 1:  # workers would cost more than they save (`tokenizers` still uses its own threads)
        return ds.map(
            _encode,
            cache_file_name=os.path.join(work, "tokens.arrow"),
            new_fingerprint=key,
            desc=f"tokenize {split}",
            **_map_kwargs(ds, encoder, cfg),
        )
    # Spawned, not forked (as `datasets.map(num_proc=...)` would): this process runs JAX's
    # threads, and a fork copies any lock one of them holds.
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [
            pool.submit(
                _tokenize_shard,
                ds.shard(procs, i, contiguous=True),
                encoder,
                cfg,
                os.path.join(work, f"tokens-{i:03d}.arrow"),
                f"{key}-{i}",
                f"tokenize {split} [{i + 1}/{procs}]",
            )
            for i in range(procs)
        ]
        files = [job.result() for job in jobs]
    return datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
