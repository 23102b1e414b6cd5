"""Fake quantizers of DQ-BART with a clipped straight-through estimator (pure JAX).

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
so exported integer codes reproduce training bit for bit. Statistics and scales are float32 whatever the input dtype. Groups whose scale
would fall below ``2**-120`` (all-zero groups in practice) quantize to exact zeros with a
finite scale, where the reference code gives NaN.

The TBT follow-up (Liu et al., "Binary and Ternary Natural Language Generation", ACL 2023)
adds two families. Weights: statistics-based ternary (``alpha = 4/3 * mean|w|``) and binary
(``alpha = mean|w|``) codes with one scale per output row, no clipping and a plain STE
(``tbt_ternary``, ``tbt_binary``). Activations: the elastic 1-2 bit quantizer with a learned
step size and LSQ gradients (``elastic``, initialized by ``elastic_init``).
"""

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from dq_jax.quant.codes import Codes
from dq_jax.quant.packing import pack, packed_nbytes, unpack

__all__ = [
    "symmetric", "ternary", "binary", "mse", "activation", "symmetric_codes", "ternary_codes",
    "binary_codes", "mse_codes", "dequantize", "ste_clip", "pack", "unpack", "packed_nbytes",
    "tbt_ternary", "tbt_binary", "tbt_ternary_codes", "tbt_binary_codes", "elastic",
    "elastic_init", "elastic_levels", "elastic_codes", "Codes",
]

Axes = Optional[Union[int, Sequence[int]]]
_F32 = jnp.float32
# Scales below this mark an all-zero group: XLA on CPU/TPU flushes subnormals, so a smaller
# scale or its reciprocal would turn into 0 or inf.
_MIN_SCALE = 2.0 ** -120


def _levels(bits) -> int:
    if bits not in range(2, 9):
        raise ValueError(f"bits={bits!r} is not supported; supported range is 2..8")
    return 2 ** (int(bits) - 1) - 1


def _axes(ndim: int, reduce_axes: Axes) -> Tuple[int, ...]:
    if reduce_axes is None:
        return tuple(range(ndim))
    if not isinstance(reduce_axes, (tuple, list)):
        reduce_axes = (reduce_axes,)
    for a in reduce_axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"reduce axis {a} out of range for a {ndim}-d input")
    return tuple(sorted({int(a) % ndim for a in reduce_axes}))


def _call(runner, kernel, x, clip, reduce_axes, n=0, steps=0):
    x = jnp.asarray(x)
    return runner(kernel, _axes(x.ndim, reduce_axes), steps, x, clip, n)


def _codes(kernel, x, clip, reduce_axes, bits: int, n=0, steps=0) -> Codes:
    x = jnp.asarray(x)
    axes = _axes(x.ndim, reduce_axes)
    values, scales = _run_codes(kernel, axes, steps, x, clip, n)
    return Codes(values, scales, bits, axes)


# One jit around each whole quantizer, so eager calls (export) and traced calls (training)
# compile the same arithmetic. clip and n are traced: one compile serves every bit-width.
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run_codes(kernel, axes, steps, x, clip, n):
    xc = jnp.clip(x.astype(_F32), -clip, clip)
    size = 1
    for a in axes:
        size *= xc.shape[a]
    # Opaque to XLA even when n is a constant (inside a caller's jit): otherwise it rewrites
    # x / n as x * (1 / n) and cancels n * (m / n) / n, which _stable_step relies on.
    n = lax.optimization_barrier(jnp.asarray(n, _F32))
    return kernel(xc, axes, max(size, 1), n, steps)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run_fake(kernel, axes, steps, x, clip, n):
    q = _dequantize(*_run_codes(kernel, axes, steps, x, clip, n), dtype=x.dtype)
    return ste_clip(x, lax.stop_gradient(q), clip)


def _sum(v, axes):
    return jnp.sum(v, axis=axes, keepdims=True)


def _stable_step(m, n):
    """``m / n``, moved by at most 1 ulp to a fixed point of ``s -> fl(fl(n * s) / n)``.

    The maximum of the quantized tensor is ``fl(n * step)``, and ``fl(fl(n * s) / n) != s`` for
    about 1 step in 6 (n = 3) to 1 in 130 (n = 127), so quantizing ``q`` again would drift by
    an ulp. One more round trip lands on a fixed point (checked exhaustively over all float32
    mantissas for every n = 2**k - 1 <= 127), which makes ``symmetric`` idempotent.
    """
    return (n * (m / n)) / n


def _dequantize(values, scales, dtype):
    return (values.astype(_F32) * scales).astype(dtype)


def dequantize(codes: Codes, dtype=jnp.float32):
    """``codes.values * codes.scales`` in float32, cast to ``dtype``: the fake-quantized tensor."""
    return codes.dequantize(dtype)


def _symmetric(xc, axes, size, n, steps):
    m = jnp.max(jnp.abs(xc), axis=axes, keepdims=True, initial=0.0)
    step = _stable_step(m, n)
    ok = step >= _MIN_SCALE
    inv = jnp.where(ok, n / jnp.where(ok, m, 1.0), 0.0)
    codes = jnp.round(xc * inv)  # half-to-even, like torch.round
    return codes.astype(jnp.int8), jnp.where(ok, step, 1.0)


def _ternary(xc, axes, size, n, steps):
    ax = jnp.abs(xc)
    keep = ax > 0.7 * (_sum(ax, axes) / size)
    count = _sum(keep.astype(_F32), axes)
    alpha = _sum(jnp.where(keep, ax, 0.0), axes) / jnp.maximum(count, 1.0)
    ok = alpha >= _MIN_SCALE
    codes = jnp.where(keep & ok, jnp.sign(xc), 0.0)
    return codes.astype(jnp.int8), jnp.where(ok, alpha, 1.0)


def _binary(xc, axes, size, n, steps):
    alpha = _sum(jnp.abs(xc), axes) / size
    codes = jnp.where(xc >= 0, 1, -1)  # sign(0) := +1 so every code fits in 1 bit
    return codes.astype(jnp.int8), jnp.where(alpha >= _MIN_SCALE, alpha, 0.0)


def _mse(xc, axes, size, n, steps):
    alpha = jnp.max(jnp.abs(xc), axis=axes, keepdims=True, initial=0.0) / n
    alpha = jnp.where(alpha >= _MIN_SCALE, alpha, 1.0)  # zero group: b = 0 from here on

    def round_codes(a):
        return jnp.clip(jnp.round(xc / a), -n, n)

    def update(_, alpha):
        b = round_codes(alpha)
        new = _sum(xc * b, axes) / jnp.maximum(_sum(b * b, axes), 1.0)
        return jnp.where(new >= _MIN_SCALE, new, alpha)

    alpha = lax.fori_loop(0, steps, update, alpha)
    return round_codes(alpha).astype(jnp.int8), alpha


def symmetric_codes(x, bits: int, clip: float = 2.5, reduce_axes: Axes = None):
    """Symmetric uniform codes. ``x [*]`` -> ``Codes`` (values int8 [*] in [-n, n], f32 scales)
    with ``n = 2**(bits-1) - 1`` and scales of the keepdims shape of the reduction."""
    return _codes(_symmetric, x, clip, reduce_axes, int(bits), _levels(bits))


def ternary_codes(x, clip: float = 2.5, reduce_axes: Axes = None):
    """TWN codes. ``x [*]`` -> ``Codes`` (2-bit values in {-1, 0, 1}, f32 scales); the scale is
    the mean |x| of the elements above ``0.7 * mean|x|``."""
    return _codes(_ternary, x, clip, reduce_axes, 2)


def binary_codes(x, clip: float = 2.5, reduce_axes: Axes = None):
    """BWN codes. ``x [*]`` -> ``Codes`` (1-bit values in {-1, +1}, f32 scales = mean|x|)."""
    return _codes(_binary, x, clip, reduce_axes, 1)


def mse_codes(x, bits: int, clip: float = 2.5, reduce_axes: Axes = None, steps: int = 5):
    """Symmetric codes with the scale refined by ``steps`` alternating least-squares updates
    (``b = clip(round(x / alpha), -n, n)``, ``alpha = <x, b> / <b, b>``).
    ``x [*]`` -> ``Codes`` (values int8 [*] in [-n, n], f32 scales)."""
    return _codes(_mse, x, clip, reduce_axes, int(bits), _levels(bits), int(steps))


@jax.custom_vjp
def ste_clip(x, q, clip):
    """Returns ``q`` (same shape and dtype as ``x``); the gradient w.r.t. ``x`` is the incoming
    one where ``-clip < x < clip`` and 0 elsewhere (also exactly at +-clip). ``q`` and ``clip``
    get no gradient."""
    del x, clip
    return q


def _ste_fwd(x, q, clip):
    xf = x.astype(_F32)
    return q, ((xf > -clip) & (xf < clip), clip)


def _ste_bwd(res, g):
    inside, clip = res
    return jnp.where(inside, g, jnp.zeros_like(g)), jnp.zeros_like(g), jnp.zeros_like(clip)


ste_clip.defvjp(_ste_fwd, _ste_bwd)


def symmetric(x, bits: int, clip: float = 2.5, reduce_axes: Axes = None):
    """Symmetric uniform fake quantization, 2..8 bits. ``x [*]`` -> ``q [*]`` (x's dtype)."""
    return _call(_run_fake, _symmetric, x, clip, reduce_axes, _levels(bits))


def ternary(x, clip: float = 2.5, reduce_axes: Axes = None):
    """Ternary (TWN) fake quantization. ``x [*]`` -> ``q [*]`` (x's dtype)."""
    return _call(_run_fake, _ternary, x, clip, reduce_axes)


def binary(x, clip: float = 2.5, reduce_axes: Axes = None):
    """Binary (BWN) fake quantization. ``x [*]`` -> ``q [*]`` (x's dtype)."""
    return _call(_run_fake, _binary, x, clip, reduce_axes)


def mse(x, bits: int, clip: float = 2.5, reduce_axes: Axes = None, steps: int = 5):
    """Symmetric fake quantization with an MSE-refined scale. ``x [*]`` -> ``q [*]``."""
    return _call(_run_fake, _mse, x, clip, reduce_axes, _levels(bits), int(steps))


def activation(x, bits: int, clip: float = 2.5, per_example: bool = False):
    """Dynamic symmetric activation quantization. ``x [B, ...]`` -> ``q [B, ...]``; one scale
    for the whole tensor (the reference: outputs depend on the rest of the batch) or, with
    ``per_example``, one scale per leading-axis example."""
    axes = tuple(range(1, jnp.ndim(x))) if per_example else None
    return symmetric(x, bits, clip, reduce_axes=axes)


# --- TBT (Liu et al., ACL 2023): statistics-based weights and elastic activations ---

# TBT weights are never clipped: an infinite clip makes _run_codes' clamp the identity.
_NO_CLIP = float("inf")
# Floor of the learned elastic step size (the reference's eps).
_ALPHA_EPS = 1e-5


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
    q = _dequantize(*_run_codes(kernel, axes, steps, x, clip, n), dtype=x.dtype)
    return _ste(x, lax.stop_gradient(q))


def _mean_abs(w, axes, size):
    # A true division: XLA turns / size into * (1 / size), off by an ulp unless size is a power
    # of two, and the TBT scale is the statistic itself.
    return _sum(jnp.abs(w), axes) / lax.optimization_barrier(jnp.float32(size))


def _tbt_ternary(w, axes, size, n, steps):
    alpha = (4.0 / 3.0) * _mean_abs(w, axes, size)
    ok = alpha >= _MIN_SCALE
    codes = jnp.round(jnp.clip(w / jnp.where(ok, alpha, 1.0), -1.0, 1.0))  # half-to-even
    return jnp.where(ok, codes, 0.0).astype(jnp.int8), jnp.where(ok, alpha, 1.0)


def _tbt_binary(w, axes, size, n, steps):
    alpha = _mean_abs(w, axes, size)
    codes = jnp.where(w >= 0, 1, -1)  # sign(0) := +1, as in _binary
    return codes.astype(jnp.int8), jnp.where(alpha >= _MIN_SCALE, alpha, 0.0)


def tbt_ternary_codes(w, reduce_axes: Axes = (-1,)):
    """TBT ternary weight codes: ``alpha = 4/3 * mean|w|`` over ``reduce_axes`` and
    ``codes = round_half_even(clip(w / alpha, -1, 1))``, no clipping of ``w`` itself.

    ``w [*]`` -> ``Codes`` (2-bit values in {-1, 0, 1}, f32 scales [keepdims shape]). The default
    ``(-1,)`` gives one scale per output row of a PyTorch ``nn.Linear`` ``[out, in]`` weight;
    for a Flax ``[in, out]`` kernel pass ``reduce_axes=(0,)`` (scales ``[1, out]``). An all-zero
    group gets zero codes and scale 1.
    """
    return _codes(_tbt_ternary, w, _NO_CLIP, reduce_axes, 2)


def tbt_binary_codes(w, reduce_axes: Axes = (-1,)):
    """TBT binary weight codes: ``alpha = mean|w|`` over ``reduce_axes``, ``codes = sign(w)``
    with ``sign(0) := +1``, no clipping.

    ``w [*]`` -> ``Codes`` (1-bit values in {-1, +1}, f32 scales [keepdims shape]). Rows of an
    ``[out, in]`` weight by default; a Flax ``[in, out]`` kernel needs ``reduce_axes=(0,)``.
    An all-zero group gets scale 0, so it dequantizes to exact zeros.
    """
    return _codes(_tbt_binary, w, _NO_CLIP, reduce_axes, 1)


def tbt_ternary(w, reduce_axes: Axes = (-1,)):
    """TBT ternary fake quantization (see ``tbt_ternary_codes``). ``w [*]`` -> ``q [*]`` (w's
    dtype); the gradient w.r.t. ``w`` is the incoming one everywhere (plain STE)."""
    return _call(_run_fake_plain, _tbt_ternary, w, _NO_CLIP, reduce_axes)


def tbt_binary(w, reduce_axes: Axes = (-1,)):
    """TBT binary fake quantization (see ``tbt_binary_codes``). ``w [*]`` -> ``q [*]`` (w's
    dtype); the gradient w.r.t. ``w`` is the incoming one everywhere (plain STE)."""
    return _call(_run_fake_plain, _tbt_binary, w, _NO_CLIP, reduce_axes)


def elastic_levels(bits: int, signed: bool) -> Tuple[int, int]:
    """Integer code range ``(Qn, Qp)`` of the elastic quantizer: signed 1 bit ``(-1, 1)``
    (sign only), signed 2 bits ``(-1, 1)`` (levels -1, 0, 1), unsigned 1 bit ``(0, 1)``,
    unsigned 2 bits ``(0, 2)``."""
    if bits not in (1, 2):
        raise ValueError(f"bits={bits!r} is not supported by the elastic quantizer; "
                         "supported bits are 1 and 2")
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
    xf = x.astype(_F32)
    factor = 2.0 if signed else 4.0
    value = factor * _mean_abs(xf, None, max(xf.size, 1)).reshape(()) / math.sqrt(qp)
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
        alpha = alpha.astype(_F32)
    axes = () if signed else _axes(x.ndim, reduce_axes)
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
    axes = () if signed else _axes(x.ndim, reduce_axes)
    a, m, _, _, codes = _elastic_parts(int(bits), bool(signed), axes, x, jnp.asarray(alpha, _F32))
    ones = (1,) * x.ndim
    return Codes(codes.astype(jnp.int8), a.reshape(ones), int(bits), tuple(range(x.ndim)),
                 None if signed else m.reshape(m.shape if m.ndim == x.ndim else ones))


def _elastic_parts(bits, signed, axes, x, alpha):
    """-> ``(a, m, v, k, codes)``, all float32; ``k`` is the unclipped integer level."""
    qn, qp = elastic_levels(bits, signed)
    a = jnp.maximum(alpha.astype(_F32).reshape(()), jnp.float32(_ALPHA_EPS))
    # Keep x / a a true division even when alpha is a constant of the caller's jit (see
    # _run_codes): x * (1 / a) can differ by an ulp and move a code across a rounding tie.
    a = lax.optimization_barrier(a)
    xf = x.astype(_F32)
    if signed:
        m = jnp.zeros((), _F32)
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
    ga = jnp.sum(g.astype(_F32) * r) * jnp.float32(grad_scale)
    return gx, ga.reshape(alpha.shape).astype(alpha.dtype)


_elastic.defvjp(_elastic_fwd, _elastic_bwd)
