"""Tables for people: the aligned text table commands print and the Markdown table reports write."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def _text(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    fmt: Callable[[str, Any], str] | None = None,
    markdown: bool = False,
) -> str:
    """`rows` (dicts) as lines: a header, a rule, one line per row. `columns` picks and orders
    the keys (default: the first row's), `headers` renames them, `fmt(key, value)` formats a
    cell (default: floats to 4 significant digits). Text tables are aligned with ` | `;
    Markdown ones are `| a | b |` with a `|---|` rule."""
    columns = list(columns or rows[0])
    cell = fmt or (lambda _k, v: _text(v))
    header = [(headers or {}).get(c, c) for c in columns]
    body = [[cell(c, r.get(c)) for c in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-|-".join("-" * w for w in widths)]
    return "\n".join(lines + [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body])
