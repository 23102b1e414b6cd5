"""The fake quantizers of the PyTorch DQ-BART oracle (`tests.torch_reference`), each with the
clipped straight-through estimator (STE) in backward. Which tensors are quantized, and with
which quantizer, comes from `dq_jax.quant.policy` (the one quantization policy); how each
quantizer computes is written here independently.

The quantizers are written from the METHOD.md formulas, not by calling JAX, but their float32
arithmetic is ordered like `dq_jax.quant`'s, including two rewrites XLA applies to it (a
division by a constant or by a broadcast scale becomes a multiplication by the reciprocal).
Symmetric quantizers are therefore bit-identical to ours; TWN/BWN/MSE scales are float32 sums,
which torch and XLA reduce in different orders, so they can differ by a few ulp (bit-identical
again when the sums are exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dq_jax.quant import policy

DEFAULT_CLIP = 2.5
# Below this a scale marks an all-zero group (as in dq_jax.quant): code 0, finite scale.
_MIN_SCALE = 2.0**-120

Dims = Sequence[int] | None


# --------------------------------------------------------------------------- quantizers


class _STE(torch.autograd.Function):
    """Forward: `quantize(x)`; backward: the gradient passes where `-clip < x < clip`, else 0."""

    @staticmethod
    def forward(ctx, x, quantize, clip):
        xf = x.float()
        ctx.save_for_backward((xf > -clip) & (xf < clip))
        return quantize(x)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, torch.zeros_like(grad)), None, None


def _dims(x: torch.Tensor, per_row: bool, dims: Dims) -> tuple:
    """Reduction dims of one scale group: all (per tensor), the last (per row) or `dims`."""
    if dims is not None:
        return tuple(sorted({d % x.ndim for d in dims}))
    return (x.ndim - 1,) if per_row else tuple(range(x.ndim))


def _group_size(x: torch.Tensor, dims: tuple) -> int:
    size = 1
    for d in dims:
        size *= x.shape[d]
    return max(size, 1)


def _div_by_constant(t: torch.Tensor, c: int) -> torch.Tensor:
    """`t / c` the way XLA computes a division by a compile-time constant: `t * fl32(1 / c)`
    (its algebraic simplifier rewrites it so), one ulp off a true division now and then."""
    return t * torch.tensor(1.0, dtype=torch.float32).div(float(c))


def _levels(bits: int) -> int:
    if bits not in range(2, 9):
        raise ValueError(f"bits={bits!r} is not supported; supported range is 2..8")
    return 2 ** (int(bits) - 1) - 1


def _dequantize(codes, scales, dtype):
    # Through int8 like dq_jax.quant's integer codes: this also turns round()'s -0.0 into +0.0.
    return (codes.to(torch.int8).float() * scales).to(dtype)


def _symmetric_q(x, n, clip, dims):
    xc = x.float().clamp(-clip, clip)
    m = xc.abs().amax(dim=dims, keepdim=True)
    # The step is `m / n` pushed to a fixed point of `s -> n * s / n` (dq_jax.quant.dq_bart._stable_step);
    # torch runs each op eagerly in float32, so this is the same arithmetic.
    step = (n * (m / n)) / n
    ok = step >= _MIN_SCALE
    # Not `n / m`: torch evaluates `scalar / tensor` as `tensor.reciprocal() * scalar`, two
    # roundings that move ~1 in 4 values by an ulp and flip codes sitting on a .5 boundary.
    inv = torch.where(ok, torch.div(torch.full_like(m, n), torch.where(ok, m, torch.ones_like(m))), torch.zeros_like(m))
    codes = torch.round(xc * inv)  # half-to-even
    return _dequantize(codes, torch.where(ok, step, torch.ones_like(step)), x.dtype)


def _ternary_q(x, clip, dims):
    xc = x.float().clamp(-clip, clip)
    ax = xc.abs()
    keep = ax > 0.7 * _div_by_constant(ax.sum(dim=dims, keepdim=True), _group_size(xc, dims))
    count = keep.float().sum(dim=dims, keepdim=True)
    alpha = torch.where(keep, ax, torch.zeros_like(ax)).sum(dim=dims, keepdim=True) / count.clamp(min=1.0)
    ok = alpha >= _MIN_SCALE
    codes = torch.where(keep & ok, torch.sign(xc), torch.zeros_like(xc))
    return _dequantize(codes, torch.where(ok, alpha, torch.ones_like(alpha)), x.dtype)


def _binary_q(x, clip, dims):
    xc = x.float().clamp(-clip, clip)
    alpha = _div_by_constant(xc.abs().sum(dim=dims, keepdim=True), _group_size(xc, dims))
    codes = torch.where(xc >= 0, 1.0, -1.0)  # sign(0) := +1, so every code fits in one bit
    return _dequantize(codes, torch.where(alpha >= _MIN_SCALE, alpha, torch.zeros_like(alpha)), x.dtype)


def _mse_q(x, n, clip, dims, steps):
    xc = x.float().clamp(-clip, clip)
    alpha = xc.abs().amax(dim=dims, keepdim=True) / n  # n is opaque to XLA: a true division
    alpha = torch.where(alpha >= _MIN_SCALE, alpha, torch.ones_like(alpha))

    def round_codes(a):
        # XLA computes `xc / a` with a broadcast `a` as `xc * (1 / a)`; so do we.
        return torch.round(xc * torch.div(torch.ones_like(a), a)).clamp(-n, n)

    for _ in range(steps):  # alternating least squares: codes for alpha, then alpha for codes
        b = round_codes(alpha)
        new = (xc * b).sum(dim=dims, keepdim=True) / (b * b).sum(dim=dims, keepdim=True).clamp(min=1.0)
        alpha = torch.where(new >= _MIN_SCALE, new, alpha)
    return _dequantize(round_codes(alpha), alpha, x.dtype)


def symmetric(
    x: torch.Tensor, bits: int, clip: float = DEFAULT_CLIP, per_row: bool = False, dims: Dims = None
) -> torch.Tensor:
    """Symmetric uniform fake quantization (2..8 bits) with an STE; `x [*]` -> `q [*]`.

    `q = round_half_even(xc * n / m) * m / n`, `xc = clamp(x, +-clip)`, `n = 2**(bits-1) - 1`,
    `m = max|xc|` per tensor, per row (last dim) with `per_row`, or over `dims` if given."""
    n = _levels(bits)
    d = _dims(x, per_row, dims)
    return _STE.apply(x, lambda t: _symmetric_q(t, n, float(clip), d), float(clip))


def ternary(x: torch.Tensor, clip: float = DEFAULT_CLIP, per_row: bool = False, dims: Dims = None) -> torch.Tensor:
    """Ternary (TWN) fake quantization with an STE: `alpha * sign(x) * (|x| > 0.7 mean|x|)`,
    alpha the mean |x| of the kept elements."""
    d = _dims(x, per_row, dims)
    return _STE.apply(x, lambda t: _ternary_q(t, float(clip), d), float(clip))


def binary(x: torch.Tensor, clip: float = DEFAULT_CLIP, per_row: bool = False, dims: Dims = None) -> torch.Tensor:
    """Binary (BWN) fake quantization with an STE: `mean|x| * sign(x)`, sign(0) = +1."""
    d = _dims(x, per_row, dims)
    return _STE.apply(x, lambda t: _binary_q(t, float(clip), d), float(clip))


def mse(
    x: torch.Tensor, bits: int, clip: float = DEFAULT_CLIP, per_row: bool = False, dims: Dims = None, steps: int = 5
) -> torch.Tensor:
    """Symmetric levels with a scale refined by `steps` alternating least-squares updates."""
    n = _levels(bits)
    d = _dims(x, per_row, dims)
    return _STE.apply(x, lambda t: _mse_q(t, n, float(clip), d, int(steps)), float(clip))


def activation(x: torch.Tensor, bits: int, clip: float = DEFAULT_CLIP, per_example: bool = False) -> torch.Tensor:
    """Dynamic symmetric activation quantization: one scale for the whole tensor (the
    reference) or, with `per_example`, one per index of dim 0."""
    dims = tuple(range(1, x.ndim)) if per_example else None
    return symmetric(x, bits, clip, dims=dims)


# The PyTorch quantizer of each `dq_jax.quant.policy` weight kind: (x, rule, per_row) -> q.
_WEIGHT_KINDS = {
    "symmetric": lambda w, r, per_row: symmetric(w, r.bits, r.clip, per_row),
    "ternary": lambda w, r, per_row: ternary(w, r.clip, per_row),
    "binary": lambda w, r, per_row: binary(w, r.clip, per_row),
    "mse": lambda w, r, per_row: mse(w, r.bits, r.clip, per_row, steps=r.mse_steps),
}


def weight_quantizer(rule: policy.WeightRule | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fake quantizer the policy's `rule` describes, in PyTorch (identity for None).

    The policy's axes are Flax's: a kernel `[in, out]` per output row reduces axis 0, an
    embedding per row axis -1; a PyTorch `[out, in]` weight and a looked-up row both reduce
    their last dimension, so any per-row rule is `per_row` here."""
    if rule is None:
        return _identity
    if rule.kind not in _WEIGHT_KINDS:
        raise ValueError(f"the PyTorch oracle implements {sorted(_WEIGHT_KINDS)}, not {rule.kind!r}")
    per_row = rule.reduce_axes is not None
    return lambda w: _WEIGHT_KINDS[rule.kind](w, rule, per_row)


def _identity(x):
    return x
