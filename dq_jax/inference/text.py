"""Text in, text out with a loaded student (`loading.load`).

`encode(student, lines)` tokenizes one document per line (blank lines kept as blanks, over-long
ones truncated), `generate_texts(student, encoded, batch_size)` generates in length-sorted,
fixed-shape batches and returns one output line per input line.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from tqdm import tqdm

from dq_jax.data.batches import bucket
from dq_jax.inference.generate import decode_texts, generate
from dq_jax.inference.generation_config import GenerationConfig
from dq_jax.inference.loading import InferenceStudent

MIN_BUCKET = 8  # shortest padded source length: one compilation per power of two above it


@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: list[np.ndarray | None]  # one per input line: source token ids, None for a blank line
    truncated: int  # lines longer than the model's source positions, cut to fit
    max_tokens: int  # that limit


@dataclasses.dataclass(frozen=True)
class Generated:
    texts: list[str]  # one per input line, "" for blank lines, no newlines inside
    tokens: int  # generated tokens (the decoder start token not counted, EOS counted)
    seconds: float  # wall time of the generation loop, compilation included
    steady_tokens: int  # of those, the tokens of batches whose shape was already compiled
    steady_seconds: float  # and those batches' time

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_tokens_per_second(self) -> float | None:
        """Throughput of the batches whose shape was already compiled; None if there were none."""
        return self.steady_tokens / self.steady_seconds if self.steady_seconds > 0 else None


def encode(student: InferenceStudent, lines: list[str]) -> Encoded:
    """Tokenizes one document per line; lines longer than `max_position_embeddings` tokens keep
    their first tokens and end in EOS, as training truncates sources."""
    limit = student.model.cfg.max_position_embeddings
    tok = student.tokenizer
    texts = [line.strip() for line in lines]
    keep = [i for i, t in enumerate(texts) if t]
    ids: list[np.ndarray | None] = [None] * len(texts)
    truncated = 0
    for i, row in zip(keep, tok([texts[i] for i in keep])["input_ids"] if keep else []):
        if len(row) > limit:
            row, truncated = list(row[: limit - 1]) + [tok.eos_token_id], truncated + 1
        ids[i] = np.asarray(row, np.int32)
    return Encoded(ids, truncated, limit)


def generate_texts(
    student: InferenceStudent,
    encoded: Encoded,
    batch_size: int = 16,
    gen: GenerationConfig | None = None,
    progress: bool = True,
) -> Generated:
    """Generates for every non-blank line, `batch_size` documents at a time in length order, each
    batch padded to a power-of-two length and to `batch_size` rows (few distinct shapes, so few
    compilations)."""
    gen = gen or student.generation
    pad = student.generation.pad_token_id
    order = sorted((i for i, x in enumerate(encoded.ids) if x is not None), key=lambda i: len(encoded.ids[i]))
    batch_size = max(1, min(batch_size, len(order)))  # a few documents are not padded up to a large batch
    out = [""] * len(encoded.ids)
    tokens, steady_tokens, steady_seconds, shapes = 0, 0, 0.0, set()
    start = time.perf_counter()
    with tqdm(total=len(order), desc="generate", unit="doc", disable=not progress) as bar:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            rows = [encoded.ids[i] for i in idx] + [encoded.ids[idx[0]]] * (batch_size - len(idx))
            length = bucket(max(len(r) for r in rows), MIN_BUCKET, encoded.max_tokens)
            ids = np.full((batch_size, length), pad, np.int32)  # [B, S]
            mask = np.zeros((batch_size, length), np.int32)
            for r, row in enumerate(rows):
                ids[r, : len(row)], mask[r, : len(row)] = row, 1
            t0 = time.perf_counter()
            res = generate(student.model, student.params, ids, mask, gen)
            seqs, lengths = np.asarray(res.sequences)[: len(idx)], np.asarray(res.lengths)[: len(idx)]
            n = int((lengths - 1).sum())
            tokens += n
            if ids.shape in shapes:  # the first batch of a shape compiles generation for it
                steady_tokens, steady_seconds = steady_tokens + n, steady_seconds + time.perf_counter() - t0
            shapes.add(ids.shape)
            for i, text in zip(idx, decode_texts(student.tokenizer, seqs)):
                out[i] = " ".join(text.splitlines()).strip()  # one line per document
            bar.update(len(idx))
    return Generated(out, tokens, time.perf_counter() - start, steady_tokens, steady_seconds)
