"""The user-level cache directory every job shares: `$DQ_JAX_CACHE`, else `~/.cache/dq_jax`.

Tokenized splits (`tokenized/`), compiled programs (`compilation/`) and measured CPU peaks live
under it; each piece can be pointed elsewhere by its own config key. Deleting it is always safe.
"""

from __future__ import annotations

import os


def root() -> str:
    return os.environ.get("DQ_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dq_jax")


def path(*parts: str) -> str:
    return os.path.join(root(), *parts)
