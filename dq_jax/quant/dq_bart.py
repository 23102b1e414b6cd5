"""DQ-BART's quantizers: clipped fake quantizers with a straight-through estimator (pure JAX).

Every quantizer clamps its input to ``[-clip, clip]`` (clip = 2.5 in DQ-BART), computes one
scale per group (``reduce_axes=None``: the whole tensor; ``(-1,)``: one per row; any tuple of
axes: the statistics reduce over those axes) and maps each element to an integer code times
that scale: symmetric uniform (``codes = round_half_even(x * n / max|x|)``, ``n = 2**(bits-1)-1``),
ternary TWN (``{-1, 0, 1} * alpha`` with threshold ``0.7 * mean|x|``), binary BWN
(``{-1, +1} * mean|x|``) and an MSE-optimal symmetric scale found by alternating least squares.
The backward pass is the STE of the reference code: the gradient passes unchanged where
``-clip < x < clip`` and is zero elsewhere; scales get no gradient. Each ``*_codes`` function
returns a ``Codes`` (int8 codes of x's shape, float32 scales of the keepdims shape, the code
width and the reduced axes) and the fake quantizer is exactly ``dequantize(codes, x.dtype)``,
so exported integer codes reproduce training bit for bit. Groups whose scale would fall below
``2**-120`` (all-zero groups in practice) quantize to exact zeros with a finite scale, where the
reference code gives NaN. The TBT families are `tbt_weights` and `elastic_activations`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from dq_jax.quant.codes import Codes
from dq_jax.quant.grouped import F32, MIN_SCALE, Axes, call, dequantize_values, group_sum, make_codes, run_codes


def _levels(bits) -> int:
    if bits not in range(2, 9):
        raise ValueError(f"bits={bits!r} is not supported; supported range is 2..8")
    return 2 ** (int(bits) - 1) - 1


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run_fake(kernel, axes, steps, x, clip, n):
    q = dequantize_values(*run_codes(kernel, axes, steps, x, clip, n), dtype=x.dtype)
    return ste_clip(x, lax.stop_gradient(q), clip)


def _stable_step(m, n):
    """``m / n``, moved by at most 1 ulp to a fixed point of ``s -> fl(fl(n * s) / n)``.

    The maximum of the quantized tensor is ``fl(n * step)``, and ``fl(fl(n * s) / n) != s`` for
    about 1 step in 6 (n = 3) to 1 in 130 (n = 127), so quantizing ``q`` again would drift by
    an ulp. One more round trip lands on a fixed point (checked exhaustively over all float32
    mantissas for every n = 2**k - 1 <= 127), which makes ``symmetric`` idempotent.
    """
    return (n * (m / n)) / n


def dequantize(codes: Codes, dtype=jnp.float32):
    """``codes.values * codes.scales`` in float32, cast to ``dtype``: the fake-quantized tensor."""
    return codes.dequantize(dtype)


def _symmetric(xc, axes, size, n, steps):
    m = jnp.max(jnp.abs(xc), axis=axes, keepdims=True, initial=0.0)
    step = _stable_step(m, n)
    ok = step >= MIN_SCALE
    inv = jnp.where(ok, n / jnp.where(ok, m, 1.0), 0.0)
    codes = jnp.round(xc * inv)  # half-to-even, like torch.round
    return codes.astype(jnp.int8), jnp.where(ok, step, 1.0)


def _ternary(xc, axes, size, n, steps):
    ax = jnp.abs(xc)
    keep = ax > 0.7 * (group_sum(ax, axes) / size)
    count = group_sum(keep.astype(F32), axes)
    alpha = group_sum(jnp.where(keep, ax, 0.0), axes) / jnp.maximum(count, 1.0)
    ok = alpha >= MIN_SCALE
    codes = jnp.where(keep & ok, jnp.sign(xc), 0.0)
    return codes.astype(jnp.int8), jnp.where(ok, alpha, 1.0)


def _binary(xc, axes, size, n, steps):
    alpha = group_sum(jnp.abs(xc), axes) / size
    codes = jnp.where(xc >= 0, 1, -1)  # sign(0) := +1 so every code fits in 1 bit
    return codes.astype(jnp.int8), jnp.where(alpha >= MIN_SCALE, alpha, 0.0)


def _mse(xc, axes, size, n, steps):
    alpha = jnp.max(jnp.abs(xc), axis=axes, keepdims=True, initial=0.0) / n
    alpha = jnp.where(alpha >= MIN_SCALE, alpha, 1.0)  # zero group: b = 0 from here on

    def round_codes(a):
        return jnp.clip(jnp.round(xc / a), -n, n)

    def update(_, alpha):
        b = round_codes(alpha)
        new = group_sum(xc * b, axes) / jnp.maximum(group_sum(b * b, axes), 1.0)
        return jnp.where(new >= MIN_SCALE, new, alpha)

    alpha = lax.fori_loop(0, steps, update, alpha)
    return round_codes(alpha).astype(jnp.int8), alpha


def symmetric_codes(x, bits: int, clip: float = 2.5, reduce_axes: Axes = None):
    """Symmetric uniform codes. ``x [*]`` -> ``Codes`` (values int8 [*] in [-n, n], f32 scales)
    with ``n = 2**(bits-1) - 1`` and scales of the keepdims shape of the reduction."""
    return make_codes(_symmetric, x, clip, reduce_axes, int(bits), _levels(bits))


def ternary_codes(x, clip: float = 2.5, reduce_axes: Axes = None):
    """TWN codes. ``x [*]`` -> ``Codes`` (2-bit values in {-1, 0, 1}, f32 scales); the scale is
    the mean |x| of the elements above ``0.7 * mean|x|``."""
    return make_codes(_ternary, x, clip, reduce_axes, 2)


def binary_codes(x, clip: float = 2.5, reduce_axes: Axes = None):
    """BWN codes. ``x [*]`` -> ``Codes`` (1-bit values in {-1, +1}, f32 scales = mean|x|)."""
    return make_codes(_binary, x, clip, reduce_axes, 1)


def mse_codes(x, bits: int, clip: float = 2.5, reduce_axes: Axes = None, steps: int = 5):
    """Symmetric codes with the scale refined by ``steps`` alternating least-squares updates
    (``b = clip(round(x / alpha), -n, n)``, ``alpha = <x, b> / <b, b>``).
    ``x [*]`` -> ``Codes`` (values int8 [*] in [-n, n], f32 scales)."""
    return make_codes(_mse, x, clip, reduce_axes, int(bits), _levels(bits), int(steps))


@jax.custom_vjp
def ste_clip(x, q, clip):
    """Returns ``q`` (same shape and dtype as ``x``); the gradient w.r.t. ``x`` is the incoming
    one where ``-clip < x < clip`` and 0 elsewhere (also exactly at +-clip). ``q`` and ``clip``
    get no gradient."""
    del x, clip
    return q


def _ste_fwd(x, q, clip):
    xf = x.astype(F32)
    return q, ((xf > -clip) & (xf < clip), clip)


def _ste_bwd(res, g):
    inside, clip = res
    return jnp.where(inside, g, jnp.zeros_like(g)), jnp.zeros_like(g), jnp.zeros_like(clip)


ste_clip.defvjp(_ste_fwd, _ste_bwd)


def symmetric(x, bits: int, clip: float = 2.5, reduce_axes: Axes = None):
    """Symmetric uniform fake quantization, 2..8 bits. ``x [*]`` -> ``q [*]`` (x's dtype)."""
    return call(_run_fake, _symmetric, x, clip, reduce_axes, _levels(bits))


def ternary(x, clip: float = 2.5, reduce_axes: Axes = None):
    """Ternary (TWN) fake quantization. ``x [*]`` -> ``q [*]`` (x's dtype)."""
    return call(_run_fake, _ternary, x, clip, reduce_axes)


def binary(x, clip: float = 2.5, reduce_axes: Axes = None):
    """Binary (BWN) fake quantization. ``x [*]`` -> ``q [*]`` (x's dtype)."""
    return call(_run_fake, _binary, x, clip, reduce_axes)


def mse(x, bits: int, clip: float = 2.5, reduce_axes: Axes = None, steps: int = 5):
    """Symmetric fake quantization with an MSE-refined scale. ``x [*]`` -> ``q [*]``."""
    return call(_run_fake, _mse, x, clip, reduce_axes, _levels(bits), int(steps))


def activation(x, bits: int, clip: float = 2.5, per_example: bool = False):
    """Dynamic symmetric activation quantization. ``x [B, ...]`` -> ``q [B, ...]``; one scale
    for the whole tensor (the reference: outputs depend on the rest of the batch) or, with
    ``per_example``, one scale per leading-axis example."""
    axes = tuple(range(1, jnp.ndim(x))) if per_example else None
    return symmetric(x, bits, clip, reduce_axes=axes)
