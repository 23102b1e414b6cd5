"""What the quantizers of every family share: groups of elements that one scale covers
(`reduce_axes`), the one jit-compiled runner that turns a family's kernel into integer codes and
scales, and the scale below which a group counts as all zeros.

A kernel takes `(x clamped to the clip, reduced axes, group size, n, steps)` and returns int8
codes and float32 scales of the keepdims shape; `run_codes` runs it, `make_codes` wraps the result
in a `Codes`. Statistics and scales are float32 whatever the input dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from dq_jax.quant.codes import Codes

Axes = int | Sequence[int] | None
F32 = jnp.float32
# Scales below this mark an all-zero group: XLA on CPU/TPU flushes subnormals, so a smaller
# scale or its reciprocal would turn into 0 or inf.
MIN_SCALE = 2.0**-120


def normalize_axes(ndim: int, reduce_axes: Axes) -> tuple[int, ...]:
    if reduce_axes is None:
        return tuple(range(ndim))
    if not isinstance(reduce_axes, (tuple, list)):
        reduce_axes = (reduce_axes,)
    for a in reduce_axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"reduce axis {a} out of range for a {ndim}-d input")
    return tuple(sorted({int(a) % ndim for a in reduce_axes}))


def call(runner, kernel, x, clip, reduce_axes, n=0, steps=0):
    """`runner(kernel, axes, steps, x, clip, n)` with `reduce_axes` normalized."""
    x = jnp.asarray(x)
    return runner(kernel, normalize_axes(x.ndim, reduce_axes), steps, x, clip, n)


def make_codes(kernel, x, clip, reduce_axes, bits: int, n=0, steps=0) -> Codes:
    """The `Codes` of `x` by `kernel`, `bits` wide, scales over `reduce_axes`."""
    x = jnp.asarray(x)
    axes = normalize_axes(x.ndim, reduce_axes)
    values, scales = run_codes(kernel, axes, steps, x, clip, n)
    return Codes(values, scales, bits, axes)


# One jit around each whole quantizer, so eager calls (export) and traced calls (training)
# compile the same arithmetic. clip and n are traced: one compile serves every bit-width.
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def run_codes(kernel, axes, steps, x, clip, n):
    xc = jnp.clip(x.astype(F32), -clip, clip)
    size = 1
    for a in axes:
        size *= xc.shape[a]
    # Opaque to XLA even when n is a constant (inside a caller's jit): otherwise it rewrites
    # x / n as x * (1 / n) and cancels n * (m / n) / n, which `dq_bart`'s stable step relies on.
    n = lax.optimization_barrier(jnp.asarray(n, F32))
    return kernel(xc, axes, max(size, 1), n, steps)


def group_sum(v, axes):
    """The sum over each group, keepdims."""
    return jnp.sum(v, axis=axes, keepdims=True)


def dequantize_values(values, scales, dtype):
    """`values * scales` in float32, cast to `dtype`."""
    return (values.astype(F32) * scales).astype(dtype)


def mean_abs(w, axes, size):
    """The mean absolute value of each group of `size` elements."""
    # A true division: XLA turns / size into * (1 / size), off by an ulp unless size is a power
    # of two, and the TBT scale is the statistic itself.
    return group_sum(jnp.abs(w), axes) / lax.optimization_barrier(jnp.float32(size))
