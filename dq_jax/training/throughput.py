"""How fast a training stage runs: step time, tokens/s, achieved FLOP/s per device and MFU.

FLOPs per step come from XLA's cost analysis of the *lowered* step (tracing and lowering, no
compilation), once per batch shape: length buckets give a stage several. Peak FLOP/s per device
comes from `train.peak_tflops`, else from the table of known accelerators below, else, on CPU,
from a short matmul timing measured once per machine and precision and kept in the user cache
(`$DQ_JAX_CACHE/cpu_peak.json`, else `~/.cache/dq_jax/cpu_peak.json`).
MFU = achieved FLOP/s per device / peak FLOP/s per device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dq_jax.utils import user_cache

log = logging.getLogger(__name__)

# Dense (no sparsity) peaks per device in TFLOP/s: (name, device_kind spellings, bf16, fp32).
# The fp32 column is what an fp32 run's matmuls get at JAX's default matmul precision: TF32
# tensor cores on A100/H100, one bf16 pass of the MXU on TPUs (so there it equals bf16).
# A JAX device is one GPU, or one TPU chip (v4 and v5p chips are two cores run as one device).
KNOWN_PEAKS = (
    # NVIDIA A100 datasheet (SXM4 and PCIe, 40 and 80 GB): BF16 tensor 312, TF32 tensor 156.
    ("A100", ("a100",), 312.0, 156.0),
    # NVIDIA H100 datasheet, PCIe: BF16 1513 and TF32 756 with sparsity, half that dense.
    ("H100 PCIe", ("h100 pcie",), 756.0, 378.0),
    # NVIDIA H100 datasheet, SXM5: BF16 1979 and TF32 989 with sparsity, half that dense.
    ("H100 SXM", ("h100",), 989.0, 494.5),
    # Google Cloud TPU docs, "TPU v4": 275 bf16 TFLOP/s per chip.
    ("TPU v4", ("tpu v4",), 275.0, 275.0),
    # Google Cloud TPU docs, "TPU v5e": 197 bf16 TFLOP/s per chip; JAX says "TPU v5 lite".
    ("TPU v5e", ("tpu v5 lite", "tpu v5e"), 197.0, 197.0),
    # Google Cloud TPU docs, "TPU v5p": 459 bf16 TFLOP/s per chip; JAX says "TPU v5" or "TPU v5p".
    ("TPU v5p", ("tpu v5", "tpu v5p"), 459.0, 459.0),
)


def known_peak(device_kind: str, precision: str) -> tuple[str, float] | None:
    """(accelerator name, peak TFLOP/s per device) from the table, or None. TPU kinds must match
    exactly ("TPU v4 lite" is another chip); GPU names are found inside NVIDIA's longer kinds
    ("NVIDIA A100-SXM4-80GB")."""
    kind = device_kind.strip().lower()
    for name, spellings, bf16, fp32 in KNOWN_PEAKS:
        if any(kind == s if s.startswith("tpu") else s in kind for s in spellings):
            return name, (bf16 if precision == "bf16" else fp32)
    return None


@dataclasses.dataclass(frozen=True)
class Peak:
    tflops: float  # per device
    source: str  # where the number comes from, for the log


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _time_matmul(precision: str, n: int, repeat: int) -> float:
    """FLOP/s of the best of `repeat` jitted `[n,n] @ [n,n]` products, fp32 or bf16 operands
    accumulated in fp32 (how `dq_jax.model.precision` multiplies)."""
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    a, b = (jax.random.normal(k, (n, n), dtype) for k in jax.random.split(jax.random.key(0)))
    f = jax.jit(lambda x, y: jax.lax.dot_general(x, y, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best  # the best run: a peak is what the machine can reach


def measured_cpu_peak(
    precision: str, n: int = 1024, repeat: int = 5, measure: Callable[..., float] = _time_matmul
) -> float:
    """This machine's matmul FLOP/s in `precision` (all of its cores), measured once and then read
    from the user cache, keyed by CPU model, usable cores and precision."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    key = f"{cpu_model()} | {cores} cores | {precision}"
    path = user_cache.path("cpu_peak.json")
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure(precision, n, repeat)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(known, f, indent=1)
        os.replace(tmp, path)  # jobs running side by side never read half a file
    return float(known[key])


def device_peak(precision: str, override_tflops: float, devices: list) -> Peak:
    """Peak FLOP/s of one of `devices` (a stage mesh's devices on this process)."""
    if override_tflops > 0:
        return Peak(override_tflops, "train.peak_tflops")
    kind = devices[0].device_kind
    if (found := known_peak(kind, precision)) is not None:
        return Peak(found[1], f"{found[0]} {precision}, vendor spec")
    if devices[0].platform == "cpu":
        # every CPU device of a process shares the same cores: each gets its share of the machine
        per_device = measured_cpu_peak(precision) / len(devices) / 1e12
        return Peak(per_device, f"measured {precision} matmul on {cpu_model()}, shared by {len(devices)} device(s)")
    return Peak(0.0, f"unknown device {kind!r}; set train.peak_tflops for MFU")


def lowered_flops(lowered) -> float:
    """FLOPs in a `jax.stages.Lowered`'s cost analysis: a dict in current JAX, a list of one dict
    per module in older ones."""
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        return float(sum((c or {}).get("flops", 0.0) for c in cost))
    return float((cost or {}).get("flops", 0.0))


def _shapes(batch: dict) -> tuple:
    return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))


class StepFlops:
    """FLOPs of one train step per batch shape, for a jitted `(state, teacher_params, batch)` step.

    XLA's cost analysis counts a loop's body once, and the step scans over its A micro-batches.
    All of its work but the once-per-step optimizer update (some ten FLOPs per parameter, under 1%
    of one micro-batch's) is in that loop, so a step's FLOPs are A times the counted ones. The
    step is lowered with arguments of the shapes and shardings it ran with, so JAX's trace and
    lowering caches answer; nothing is compiled or run."""

    def __init__(self, jitted: Callable):
        self._jitted = jitted
        self._by_shape: dict[tuple, float] = {}

    def __call__(self, state: Any, teacher_params: Any, batch: dict) -> float:
        key = _shapes(batch)
        if key not in self._by_shape:
            t = time.perf_counter()
            micro_batches = next(iter(batch.values())).shape[0]  # batches are [A, B, L]
            self._by_shape[key] = micro_batches * lowered_flops(self._jitted.lower(state, teacher_params, batch))
            log.info(
                "%.4g GFLOP per step at batch shapes %s (cost analysis of the lowered step, %.1f s)",
                self._by_shape[key] / 1e9,
                sorted({s for _, s in key}),
                time.perf_counter() - t,
            )
        return self._by_shape[key]


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Speed over the steps since the last log step."""

    step_time_s: float
    tokens_per_s: float  # target (decoder) tokens that are not padding, all devices
    tflops_per_device: float
    mfu: float  # 0 when the peak is unknown

    @classmethod
    def of(cls, seconds: float, steps: int, tokens: float, flops: float, devices: int, peak: Peak) -> Throughput:
        """`tokens` and `flops` (of the whole mesh) over `steps` steps that took `seconds`."""
        seconds = max(seconds, 1e-9)
        tflops = flops / seconds / devices / 1e12
        return cls(
            step_time_s=seconds / steps,
            tokens_per_s=tokens / seconds,
            tflops_per_device=tflops,
            mfu=tflops / peak.tflops if peak.tflops > 0 else 0.0,
        )

    def scalars(self) -> dict[str, float]:
        return dataclasses.asdict(self)


class StepTimer:
    """Wall time, tokens and batch shapes of the steps between two log steps (length buckets give
    steps of several shapes, each with its FLOPs). `restart()` after whatever is not training
    (compilation, evaluation, the logging itself) and `exclude()` the seconds of a profiler's
    start and stop, so they are never counted."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self._t0, self.steps, self.tokens = time.perf_counter(), 0, 0.0
        self._by_shape: dict[tuple, list] = {}  # shapes -> [steps, an abstract batch of them]

    def add(self, tokens: float, batch: dict) -> None:
        self.steps += 1
        self.tokens += tokens
        key = _shapes(batch)
        if key in self._by_shape:
            self._by_shape[key][0] += 1
        else:
            self._by_shape[key] = [
                1,
                {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in batch.items()},
            ]

    def batches(self) -> list[tuple[int, dict]]:
        """(steps, abstract batch) for each batch shape of the window."""
        return [(n, b) for n, b in self._by_shape.values()]

    def exclude(self, seconds: float) -> None:
        self._t0 += seconds

    def seconds(self) -> float:
        return time.perf_counter() - self._t0
