"""A tokenized split as Arrow columns read in place: ragged token ids (`TokenColumn`), reference
texts (`TextColumn`), and the two with their truncation counts (`Tokenized`).

`dq_jax.data.token_cache` builds them; nothing is copied out of the memory-mapped table until a
batch reads its rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenColumn:
    """A ragged column of token ids, `N` rows of varying length, over an Arrow `list<int32>`
    column without copying it: each Arrow chunk's flat values and offsets as numpy views (so a
    memory-mapped table stays on disk until a batch reads its rows)."""

    values: tuple[np.ndarray, ...]  # per chunk, the flat ids
    offsets: tuple[np.ndarray, ...]  # per chunk, [rows + 1] positions into its values
    starts: np.ndarray  # [chunks + 1] first row of each chunk, then the row count
    rows: np.ndarray | None = None  # a view of these rows of the column, in this order (None: all)

    @classmethod
    def from_arrow(cls, column) -> TokenColumn:
        chunks = [c for c in column.chunks if len(c)]
        values = tuple(c.values.to_numpy() for c in chunks)
        offsets = tuple(c.offsets.to_numpy() for c in chunks)
        return cls(values, offsets, np.cumsum([0] + [len(c) for c in chunks]))

    @classmethod
    def from_lists(cls, rows) -> TokenColumn:
        """From token id sequences in memory (tests, small inputs)."""
        import pyarrow as pa

        return cls.from_arrow(pa.chunked_array([pa.array([list(map(int, r)) for r in rows], pa.list_(pa.int32()))]))

    def __len__(self) -> int:
        return int(self.starts[-1]) if self.rows is None else len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.rows is not None:
            i = int(self.rows[i])
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        o = self.offsets[c]
        j = i - self.starts[c]
        return self.values[c][o[j] : o[j + 1]]

    def lengths(self) -> np.ndarray:
        """[N] the length of every row, from the offsets alone."""
        if not self.offsets:
            return np.zeros(0, np.int64)
        every = np.concatenate([np.diff(o) for o in self.offsets])[: int(self.starts[-1])]
        return every if self.rows is None else every[self.rows]

    def head(self, n: int) -> TokenColumn:
        if self.rows is not None:
            return self.take(np.arange(min(n, len(self))))
        return dataclasses.replace(self, starts=np.minimum(self.starts, n))

    def take(self, idx: np.ndarray) -> TokenColumn:
        """A view of rows `idx` (in that order) without copying any ids."""
        idx = np.asarray(idx, np.int64)
        if len(idx) and not (idx.min() >= 0 and idx.max() < len(self)):
            raise IndexError(f"rows outside [0, {len(self)})")
        return dataclasses.replace(self, rows=idx if self.rows is None else self.rows[idx])


class TextColumn(Sequence[str]):
    """An Arrow string column read as a sequence of str, row by row (nothing materialized)."""

    def __init__(self, column):
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return TextColumn(self.column.slice(start, max(stop - start, 0)))
        return self.column[i].as_py()

    def take(self, idx: np.ndarray) -> TextColumn:
        return TextColumn(self.column.take(np.asarray(idx, np.int64)))


@dataclasses.dataclass(frozen=True)
class Tokenized:
    """One split's token ids and reference texts (dq_jax.data.token_cache builds it)."""

    source: TokenColumn
    target: TokenColumn
    references: Sequence[str]  # the target texts, which metrics score against
    truncated_source: int = 0
    truncated_target: int = 0

    def __len__(self) -> int:
        return len(self.source)

    def head(self, n: int) -> Tokenized:
        """The first `n` examples."""
        return dataclasses.replace(
            self, source=self.source.head(n), target=self.target.head(n), references=self.references[:n]
        )

    def take(self, idx: np.ndarray) -> Tokenized:
        """Examples `idx`, in that order: views of the token columns, no ids copied. The truncation
        counts stay those of the whole split, which is what was tokenized."""
        source, target = self.source.take(idx), self.target.take(idx)  # these check idx
        refs = self.references
        refs = refs.take(idx) if isinstance(refs, TextColumn) else [refs[int(i)] for i in idx]
        return dataclasses.replace(self, source=source, target=target, references=refs)
