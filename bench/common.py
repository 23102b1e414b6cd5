"""Shared benchmark helpers: presets, timing, the CPU record, workers, speed-ups, tables and JSON.

Every timed side of a comparison runs in its own subprocess (`run_worker`) started with
`worker_env()`, so each side's peak RSS is its own and both use the same allocator (tcmalloc
when installed: glibc malloc costs both JAX and PyTorch about a quarter of their speed on CPU).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from dq_jax.model.sizes import model_config
from dq_jax.utils.table import format_table

PRESETS = {
    # a few seconds per measurement on 2 CPU cores
    "tiny": dict(model=model_config("tiny", dropout=0.1), student_layers=(2, 1), batch=4, source=128, target=32),
    # BART-base shapes; teacher 6-6, student 6-3
    "base": dict(model=model_config("base", dropout=0.1), student_layers=(6, 3), batch=4, source=256, target=64),
}
# The instruction-set extensions that decide which low-precision matmuls a CPU runs fast.
CPU_FLAGS = ("amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    """This process's peak resident set size. /proc's VmHWM where there is one: Linux carries
    `ru_maxrss` across exec, so a worker's would be at least its parent's RSS at fork time."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tcmalloc() -> str | None:
    """Path of libtcmalloc_minimal.so.4 (Debian: `apt-get install libtcmalloc-minimal4`), or None."""
    found = sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4") + glob.glob("/usr/lib/libtcmalloc_minimal.so.4"))
    return found[0] if found else None


def worker_env() -> dict:
    """The environment every timed worker starts with: this one, plus tcmalloc preloaded if installed."""
    env = dict(os.environ)
    lib = tcmalloc()
    if lib and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD")) if p)
    return env


def allocator(env: Mapping[str, str] | None = None) -> str:
    return "tcmalloc" if "tcmalloc" in (os.environ if env is None else env).get("LD_PRELOAD", "") else "glibc"


def parse_cpuinfo(text: str) -> tuple[str, dict[str, bool]]:
    """/proc/cpuinfo text -> (model name of the first processor, {flag in CPU_FLAGS: listed?})."""
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, {f: f in flags for f in CPU_FLAGS}


def cpu(env: Mapping[str, str] | None = None) -> dict:
    """What the numbers were measured on: model, low-precision flags, cores and the allocator the
    timed processes used (`env`: theirs, default this process's)."""
    try:
        with open("/proc/cpuinfo") as f:
            model, flags = parse_cpuinfo(f.read())
    except OSError:  # not Linux
        model, flags = platform.processor() or "unknown", dict.fromkeys(CPU_FLAGS, False)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model,
        "flags": flags,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "allocator": allocator(env),
    }


def cpu_line(rec: dict) -> str:
    has = [f for f, v in rec["flags"].items() if v]
    lacks = [f for f, v in rec["flags"].items() if not v]
    return (
        f"CPU: {rec['model']}, {rec['usable_cores']}/{rec['cores']} cores, flags: {' '.join(has) or 'none'}"
        + (f" (no {' '.join(lacks)})" if lacks else "")
        + f", allocator {rec['allocator']}"
    )


def speedups(ours: Mapping[str, float | None], peers: Mapping[str, float | None]) -> dict[str, float]:
    """{"<our mode> vs <peer>": peer seconds / our seconds} for every pair both measured."""
    ok = lambda s: s is not None and math.isfinite(s) and s > 0
    return {f"{o} vs {p}": ps / os_ for o, os_ in ours.items() if ok(os_) for p, ps in peers.items() if ok(ps)}


def compute_unavailable(compute: str) -> str | None:
    """Why `QuantConfig(compute=...)` cannot be asked for in this checkout, or None if it can."""
    from dq_jax.quant.config import QuantConfig

    if compute == "fake" or "compute" in {f.name for f in dataclasses.fields(QuantConfig)}:
        return None
    return "QuantConfig has no `compute` field yet"


def quant_config(bits: tuple, compute: str):
    """`QuantConfig(*bits)` computing in `compute` mode; `compute=` is passed only when the field
    exists, so "fake" works on checkouts without it."""
    from dq_jax.quant.config import QuantConfig

    why = compute_unavailable(compute)
    if why:
        raise RuntimeError(why)
    fields = {f.name for f in dataclasses.fields(QuantConfig)}
    return QuantConfig(*bits, compute=compute) if "compute" in fields else QuantConfig(*bits)


class WorkerError(RuntimeError):
    pass


def run_worker(module: str, argv: list[str], env: Mapping[str, str]) -> dict:
    """`python -m module *argv` from the repo root; its last stdout line, parsed as JSON."""
    out = subprocess.run([sys.executable, "-m", module, *argv], env=dict(env), capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        raise WorkerError((lines[-1] if lines else f"exit code {out.returncode}") + "\n" + out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def reply(result: dict) -> None:
    """A worker's answer to `run_worker`: `result` with this process's peak RSS (unless the
    worker measured its own) as the last stdout line."""
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), **result}))


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "allocator": allocator()}


def print_table(rows: list[dict]) -> None:
    print(format_table(rows))


def write_json(name: str, payload: dict) -> str:
    """bench/results/<name>.json: a top-level `cpu` object (the payload's, else this process's
    record), then the payload, then `machine`."""
    out_dir = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"cpu": payload.get("cpu") or cpu(), **payload, "machine": machine()}, f, indent=2)
    return path
