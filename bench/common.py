"""Shared benchmark helpers: presets, timing, tables and JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from typing import Callable

from dq_jax.model_sizes import model_config
from dq_jax.table import format_table

PRESETS = {
    # a few seconds per measurement on 2 CPU cores
    "tiny": dict(model=model_config("tiny", dropout=0.1), student_layers=(2, 1), batch=4, source=128, target=32),
    # BART-base shapes; teacher 6-6, student 6-3
    "base": dict(model=model_config("base", dropout=0.1), student_layers=(6, 3), batch=4, source=256, target=64),
}


def timeit(fn: Callable[[], object], warmup: int = 1, repeat: int = 5) -> float:
    """Median seconds per call of `fn` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system"}


def print_table(rows: list[dict]) -> None:
    print(format_table(rows))


def write_json(name: str, payload: dict) -> str:
    out_dir = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(dict(payload, machine=machine()), f, indent=2)
    return path
