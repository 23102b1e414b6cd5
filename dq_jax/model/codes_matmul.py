"""Products of two quantized operands computed on their integer codes (`quant.compute="codes"`).

With `q_a = c_a * s_a (+ o_a)` and `q_b = c_b * s_b`, where the scales are constant along the
contracted axes (every scale here reduces over them: per tensor, per example, per output row):

    q_a @ q_b = (c_a @ c_b) * (s_a * s_b)  [+ o_a * sum_k q_b]

`c_a @ c_b` multiplies int8 codes with int32 accumulation, which is exact: every code is at
most `2**(bits-1)` in magnitude (`Codes.bound`), so a sum over K products stays below
`K * bound_a * bound_b < 2**31` for every shape of these models (checked at trace time).
The result therefore equals the fake-quantized float product up to float32 rounding of the
scale multiply (the float product rounds every partial sum instead). The offset term only
exists for TBT's unsigned elastic activations (their per-tensor or per-example minimum).

The backward pass is the fake quantizers' straight-through estimator, exactly as in `fake`
mode: the gradient of the product with respect to the dequantized operands is pulled back
through each operand's fake quantizer (clip masks, LSQ step-size gradients).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dq_jax.model import precision
from dq_jax.quant.codes import Codes
from dq_jax.quant.policy import ActRule, WeightRule

Rule = ActRule | WeightRule

_INT32_LIMIT = 2**31


def _letters(spec: str, ndim: int) -> list[str | None]:
    """The subscript letter of each of `ndim` dimensions (None for those under `...`)."""
    named = spec.replace("...", "")
    return [None] * (ndim - len(named)) + list(named) if "..." in spec else list(spec)


def codes_product(subscripts: str, a: Codes, b: Codes, dtype=jnp.float32) -> jax.Array:
    """`einsum(subscripts, dequantize(a), dequantize(b))` computed on the codes (see the module
    docstring). `b` must be symmetric (no offset)."""
    if b.offset is not None:
        raise ValueError("codes_product: only the first operand may have an offset")
    spec_a, spec_b = subscripts.split("->")[0].split(",")
    letters_a = _letters(spec_a, a.values.ndim)
    contracted = (set(spec_a) & set(spec_b)) - set(subscripts.split("->")[1]) - {"."}
    k = math.prod(d for d, c in zip(a.values.shape, letters_a) if c in contracted)
    if k * a.bound * b.bound >= _INT32_LIMIT:
        raise ValueError(f"codes_product: {k} products of codes up to {a.bound} x {b.bound} could overflow int32")
    acc = jnp.einsum(subscripts, a.values, b.values, preferred_element_type=jnp.int32)
    # the scales are 1 along the contracted axes, so this einsum is their broadcast product
    y = acc.astype(jnp.float32) * jnp.einsum(subscripts, a.scales, b.scales)
    if a.offset is not None:
        # sum_k o_a * q_b: the offset spread over the contracted axes, against the dequantized b
        shape = [d if c in contracted else o for d, o, c in zip(a.values.shape, a.offset.shape, letters_a)]
        y = y + jnp.einsum(subscripts, jnp.broadcast_to(a.offset, shape), b.dequantize())
    return y.astype(dtype)


def codes_einsum(subscripts: str, a, b, qa: Rule, qb: Rule, alpha_a=None, alpha_b=None, dtype=jnp.float32) -> jax.Array:
    """`einsum(subscripts, qa.fake(a, alpha_a), qb.fake(b, alpha_b))` computed on the codes, with
    the fake quantizers' gradients. `qa` and `qb` are activation or weight rules (`policy`), both
    called as `rule.fake(x, alpha)` and `rule.codes(x, alpha)`. `b` may already be `Codes`
    (weights quantized once, e.g. for generation); it then gets no gradient."""
    if isinstance(b, Codes):
        return _codes_times_codes(subscripts, qa, dtype, a, b, alpha_a)
    return _codes_einsum(subscripts, qa, qb, dtype, a, b, alpha_a, alpha_b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _codes_times_codes(subscripts, qa, dtype, a, b: Codes, alpha_a):
    return codes_product(subscripts, qa.codes(a, alpha_a), b, dtype)


def _codes_times_codes_fwd(subscripts, qa, dtype, a, b, alpha_a):
    return _codes_times_codes(subscripts, qa, dtype, a, b, alpha_a), (a, b, alpha_a)


def _codes_times_codes_bwd(subscripts, qa, dtype, res, g):
    """`a` keeps fake mode's straight-through gradient; fixed codes get none (float0 for ints)."""
    a, b, alpha_a = res
    qa_val, pull_a = jax.vjp(qa.fake, a, alpha_a)
    ga, _ = precision.einsum_grads(subscripts, qa_val, b.dequantize(qa_val.dtype), g, dtype)
    ga, galpha_a = pull_a(ga)
    zero = lambda x: np.zeros(x.shape, jax.dtypes.float0) if jnp.issubdtype(x.dtype, jnp.integer) else jnp.zeros_like(x)
    return ga, jax.tree.map(zero, b), galpha_a


_codes_times_codes.defvjp(_codes_times_codes_fwd, _codes_times_codes_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _codes_einsum(subscripts, qa, qb, dtype, a, b, alpha_a, alpha_b):
    return codes_product(subscripts, qa.codes(a, alpha_a), qb.codes(b, alpha_b), dtype)


def _codes_einsum_fwd(subscripts, qa, qb, dtype, a, b, alpha_a, alpha_b):
    return _codes_einsum(subscripts, qa, qb, dtype, a, b, alpha_a, alpha_b), (a, b, alpha_a, alpha_b)


def _codes_einsum_bwd(subscripts, qa, qb, dtype, res, g):
    a, b, alpha_a, alpha_b = res
    # The quantizers are recomputed (elementwise work); the products are the two transposed
    # matmuls of fake mode's backward, without its forward matmul, in the compute precision.
    qa_val, pull_a = jax.vjp(qa.fake, a, alpha_a)
    qb_val, pull_b = jax.vjp(qb.fake, b, alpha_b)
    ga, gb = precision.einsum_grads(subscripts, qa_val, qb_val, g, dtype)
    (ga, galpha_a), (gb, galpha_b) = pull_a(ga), pull_b(gb)
    return ga, gb, galpha_a, galpha_b


_codes_einsum.defvjp(_codes_einsum_fwd, _codes_einsum_bwd)
