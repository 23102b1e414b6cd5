"""TBT's weight quantizers (Liu et al., "Binary and Ternary Natural Language Generation", ACL
2023): statistics-based ternary (``alpha = 4/3 * mean|w|``) and binary (``alpha = mean|w|``) codes
with one scale per output row, no clipping and a plain straight-through estimator.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from dq_jax.quant.grouped import MIN_SCALE, Axes, call, dequantize_values, make_codes, mean_abs, run_codes

# TBT weights are never clipped: an infinite clip makes `run_codes`' clamp the identity.
NO_CLIP = float("inf")


@jax.custom_vjp
def _ste(x, q):
    """Returns ``q``; the gradient w.r.t. ``x`` is the incoming one everywhere."""
    del x
    return q


def _ste_plain_fwd(x, q):
    del x
    return q, None


def _ste_plain_bwd(_, g):
    return g, jnp.zeros_like(g)


_ste.defvjp(_ste_plain_fwd, _ste_plain_bwd)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run_fake_plain(kernel, axes, steps, x, clip, n):
    q = dequantize_values(*run_codes(kernel, axes, steps, x, clip, n), dtype=x.dtype)
    return _ste(x, lax.stop_gradient(q))


def _tbt_ternary(w, axes, size, n, steps):
    alpha = (4.0 / 3.0) * mean_abs(w, axes, size)
    ok = alpha >= MIN_SCALE
    codes = jnp.round(jnp.clip(w / jnp.where(ok, alpha, 1.0), -1.0, 1.0))  # half-to-even
    return jnp.where(ok, codes, 0.0).astype(jnp.int8), jnp.where(ok, alpha, 1.0)


def _tbt_binary(w, axes, size, n, steps):
    alpha = mean_abs(w, axes, size)
    codes = jnp.where(w >= 0, 1, -1)  # sign(0) := +1, as in _binary
    return codes.astype(jnp.int8), jnp.where(alpha >= MIN_SCALE, alpha, 0.0)


def tbt_ternary_codes(w, reduce_axes: Axes = (-1,)):
    """TBT ternary weight codes: ``alpha = 4/3 * mean|w|`` over ``reduce_axes`` and
    ``codes = round_half_even(clip(w / alpha, -1, 1))``, no clipping of ``w`` itself.

    ``w [*]`` -> ``Codes`` (2-bit values in {-1, 0, 1}, f32 scales [keepdims shape]). The default
    ``(-1,)`` gives one scale per output row of a PyTorch ``nn.Linear`` ``[out, in]`` weight;
    for a Flax ``[in, out]`` kernel pass ``reduce_axes=(0,)`` (scales ``[1, out]``). An all-zero
    group gets zero codes and scale 1.
    """
    return make_codes(_tbt_ternary, w, NO_CLIP, reduce_axes, 2)


def tbt_binary_codes(w, reduce_axes: Axes = (-1,)):
    """TBT binary weight codes: ``alpha = mean|w|`` over ``reduce_axes``, ``codes = sign(w)``
    with ``sign(0) := +1``, no clipping.

    ``w [*]`` -> ``Codes`` (1-bit values in {-1, +1}, f32 scales [keepdims shape]). Rows of an
    ``[out, in]`` weight by default; a Flax ``[in, out]`` kernel needs ``reduce_axes=(0,)``.
    An all-zero group gets scale 0, so it dequantizes to exact zeros.
    """
    return make_codes(_tbt_binary, w, NO_CLIP, reduce_axes, 1)


def tbt_ternary(w, reduce_axes: Axes = (-1,)):
    """TBT ternary fake quantization (see ``tbt_ternary_codes``). ``w [*]`` -> ``q [*]`` (w's
    dtype); the gradient w.r.t. ``w`` is the incoming one everywhere (plain STE)."""
    return call(_run_fake_plain, _tbt_ternary, w, NO_CLIP, reduce_axes)


def tbt_binary(w, reduce_axes: Axes = (-1,)):
    """TBT binary fake quantization (see ``tbt_binary_codes``). ``w [*]`` -> ``q [*]`` (w's
    dtype); the gradient w.r.t. ``w`` is the incoming one everywhere (plain STE)."""
    return call(_run_fake_plain, _tbt_binary, w, NO_CLIP, reduce_axes)
