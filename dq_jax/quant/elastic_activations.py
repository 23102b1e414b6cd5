"""TBT's elastic activation quantizer (Liu et al., "Binary and Ternary Natural Language
Generation", ACL 2023): 1-2 bit codes with a learned step size and LSQ gradients, initialized by
`elastic_init` from the first activations it sees.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from dq_jax.quant.codes import Codes
from dq_jax.quant.grouped import F32, Axes, mean_abs, normalize_axes

# Floor of the learned elastic step size (the reference's eps).
_ALPHA_EPS = 1e-5


def elastic_levels(bits: int, signed: bool) -> tuple[int, int]:
    """Integer code range ``(Qn, Qp)`` of the elastic quantizer: signed 1 bit ``(-1, 1)``
    (sign only), signed 2 bits ``(-1, 1)`` (levels -1, 0, 1), unsigned 1 bit ``(0, 1)``,
    unsigned 2 bits ``(0, 2)``."""
    if bits not in (1, 2):
        raise ValueError(f"bits={bits!r} is not supported by the elastic quantizer; supported bits are 1 and 2")
    if signed:
        return -1, 1
    return 0, int(bits)


def elastic_init(x, bits: int, signed: bool = True):
    """Initial elastic step size from a first batch ``x [*]`` -> f32 scalar ``[]``.

    Signed: ``2 * mean|x| / sqrt(Qp)``. Unsigned: ``4 * mean|x| / sqrt(Qp)`` (METHOD.md, as the
    TBT code: the statistics of the raw input, not of ``x - min``, whatever the granularity
    of the minimum ``elastic`` later subtracts). Floored at 1e-5, so an all-zero batch still
    gives a usable step. Computed in float32 (TBT, Liu et al., ACL 2023; ``Qp`` from
    ``elastic_levels``).
    """
    _, qp = elastic_levels(bits, signed)
    return _run_elastic_init(qp, bool(signed), jnp.asarray(x))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_elastic_init(qp, signed, x):
    xf = x.astype(F32)
    factor = 2.0 if signed else 4.0
    value = factor * mean_abs(xf, None, max(xf.size, 1)).reshape(()) / math.sqrt(qp)
    return jnp.maximum(value, jnp.float32(_ALPHA_EPS))


def elastic(x, alpha, bits: int, signed: bool = True, reduce_axes: Axes = None):
    """Elastic 1-2 bit activation quantization with a learned step size (LSQ), from TBT
    (Liu et al., "Binary and Ternary Natural Language Generation", ACL 2023).

    ``x [*]``, ``alpha`` a float scalar (shape ``[]`` or ``[1]``) -> ``q [*]`` (x's dtype).
    With ``a = max(alpha, 1e-5)`` and ``(Qn, Qp) = elastic_levels(bits, signed)``:

    - signed: ``v = x / a``; ``codes = sign(v)`` (``sign(0) := +1``) for 1 bit,
      ``clip(round_half_even(v), -1, 1)`` for 2 bits; ``q = codes * a``.
    - unsigned: ``m = min(x)`` over ``reduce_axes`` (None: the whole tensor; e.g. ``(1, 2, 3)``:
      one min per leading-axis example), a constant for autodiff; ``v = (x - m) / a``,
      ``codes = clip(round_half_even(v), 0, Qp)``, ``q = codes * a + m``. ``reduce_axes`` is
      ignored when signed.

    Backward (LSQ): ``dx = g`` where ``Qn <= v <= Qp``, 0 elsewhere;
    ``dalpha = sum(g * r) / sqrt(numel(x) * Qp)`` with ``r = round(v) - v`` inside, ``r = Qn``
    below and ``r = Qp`` above the range; for signed 1 bit, where ``q = a * sign(x)`` does not
    round ``v``, ``r = sign(x)`` everywhere (its exact derivative, as the TBT code). The floor
    does not stop the gradient (as TBT's ``torch.where`` inside the forward), so a step size at
    the floor can grow again. ``dalpha`` has alpha's shape and dtype. Arithmetic is float32;
    ``bits``, ``signed`` and ``reduce_axes`` are static.
    """
    elastic_levels(bits, signed)
    x = jnp.asarray(x)
    alpha = jnp.asarray(alpha)
    if not jnp.issubdtype(alpha.dtype, jnp.floating):
        alpha = alpha.astype(F32)
    axes = () if signed else normalize_axes(x.ndim, reduce_axes)
    return _run_elastic(int(bits), bool(signed), axes, x, alpha)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run_elastic(bits, signed, axes, x, alpha):
    return _elastic(bits, signed, axes, x, alpha)


def elastic_codes(x, alpha, bits: int, signed: bool = True, reduce_axes: Axes = None) -> Codes:
    """The codes of ``elastic(x, alpha, ...)``: ``Codes`` with int8 values in ``[Qn, Qp]``, the
    step size ``max(alpha, 1e-5)`` as the (single) scale and, unsigned, the minimum ``m`` as the
    offset, so ``dequantize`` reproduces ``elastic``'s forward bit for bit."""
    elastic_levels(bits, signed)
    x = jnp.asarray(x)
    axes = () if signed else normalize_axes(x.ndim, reduce_axes)
    a, m, _, _, codes = _elastic_parts(int(bits), bool(signed), axes, x, jnp.asarray(alpha, F32))
    ones = (1,) * x.ndim
    return Codes(
        codes.astype(jnp.int8),
        a.reshape(ones),
        int(bits),
        tuple(range(x.ndim)),
        None if signed else m.reshape(m.shape if m.ndim == x.ndim else ones),
    )


def _elastic_parts(bits, signed, axes, x, alpha):
    """-> ``(a, m, v, k, codes)``, all float32; ``k`` is the unclipped integer level."""
    qn, qp = elastic_levels(bits, signed)
    a = jnp.maximum(alpha.astype(F32).reshape(()), jnp.float32(_ALPHA_EPS))
    # Keep x / a a true division even when alpha is a constant of the caller's jit (see
    # run_codes): x * (1 / a) can differ by an ulp and move a code across a rounding tie.
    a = lax.optimization_barrier(a)
    xf = x.astype(F32)
    if signed:
        m = jnp.zeros((), F32)
        v = xf / a
    else:
        m = jnp.min(xf, axis=axes, keepdims=True)
        v = (xf - m) / a
    if signed and bits == 1:
        k = jnp.where(v >= 0, 1.0, -1.0)  # sign(0) := +1, as in _binary
    else:
        k = jnp.round(v)  # half-to-even, like torch.round
    return a, m, v, k, jnp.clip(k, qn, qp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _elastic(bits, signed, axes, x, alpha):
    return _elastic_fwd(bits, signed, axes, x, alpha)[0]


def _elastic_fwd(bits, signed, axes, x, alpha):
    a, m, _, _, codes = _elastic_parts(bits, signed, axes, x, alpha)
    return (codes * a + m).astype(x.dtype), (x, alpha)


def _elastic_bwd(bits, signed, axes, res, g):
    x, alpha = res
    qn, qp = elastic_levels(bits, signed)
    _, _, v, k, _ = _elastic_parts(bits, signed, axes, x, alpha)
    inside = (v >= qn) & (v <= qp)
    gx = jnp.where(inside, g, jnp.zeros_like(g))
    if signed and bits == 1:
        r = k
    else:
        r = jnp.where(v < qn, float(qn), jnp.where(v > qp, float(qp), k - v))
    grad_scale = 1.0 / math.sqrt(max(x.size, 1) * qp)
    ga = jnp.sum(g.astype(F32) * r) * jnp.float32(grad_scale)
    return gx, ga.reshape(alpha.shape).astype(alpha.dtype)


_elastic.defvjp(_elastic_fwd, _elastic_bwd)
