"""JAX's persistent compilation cache, on by default: a rerun, a resumed run and every sweep
point after the first load their compiled steps instead of compiling them again.

`enable` points JAX at the directory and counts what the cache answers (JAX reports each hit
and miss through `jax.monitoring`); `summary` says it in one log line at the end of a run.
"""

from __future__ import annotations

import dataclasses
import logging

from dq_jax.utils import user_cache

log = logging.getLogger(__name__)
OFF = "off"


@dataclasses.dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0
    saved_seconds: float = 0.0  # compile time the hits did not spend (as JAX recorded it)


_counts = CacheCounts()
_listening = False


def directory(setting: str) -> str | None:
    """The cache directory a `compilation_cache` config value names (None: off)."""
    if setting == OFF:
        return None
    return setting or user_cache.path("compilation")


def _on_event(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _counts.hits += 1
    elif event == "/jax/compilation_cache/cache_misses":
        _counts.misses += 1


def _on_duration(event: str, seconds: float, **_) -> None:
    if event == "/jax/compilation_cache/compile_time_saved_sec":
        _counts.saved_seconds += max(seconds, 0.0)  # a cache read slower than the compile saves nothing


def enable(setting: str) -> str | None:
    """Turns the cache on at `directory(setting)` for every later compile of this process."""
    import jax

    path = directory(setting)
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # Every program is worth keeping: a run compiles a handful, and even the small ones cost
    # a second or two each on CPU.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    global _listening
    if not _listening:  # once per process, however many runs it starts
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _listening = True
    log.info("compilation cache: %s", path)
    return path


def counts() -> CacheCounts:
    return dataclasses.replace(_counts)


def summary() -> str:
    c = _counts
    return (
        f"compilation cache: {c.hits} hits (saved {c.saved_seconds:.1f} s of compiling), "
        f"{c.misses} misses (compiled and stored)"
    )
