"""The precision policy: `fp32` (the reference) or `bf16` compute.

`bf16` runs the model's float matmuls (the teacher's, and the student's where an operand is not
quantized) with bf16 operands accumulated in fp32, forward and backward. Master weights,
optimizer state, the loss, softmax, layer-norm statistics, logits and quantizer scales stay
fp32, and products of two quantized operands stay exact (`codes_matmul`) in either precision.

Why a custom VJP: XLA on CPU runs a bf16 x bf16 dot with a bf16 result as slowly as fp32, and
autodiff's transposed dots would multiply an fp32 cotangent by a bf16 operand (an fp32 dot).
Here every dot, forward and backward, takes bf16 operands and asks for an fp32 result.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def compute_dtype(precision: str):
    """The compute dtype of a precision name (`PRECISIONS`, checked by train/settings.py)."""
    return _DTYPES[precision]


def einsum(subscripts: str, a: jax.Array, b: jax.Array, dtype=jnp.float32) -> jax.Array:
    """`einsum(subscripts, a, b)` computed in `dtype` (fp32: plainly; bf16: bf16 operands,
    fp32 accumulation, forward and backward), returned in `dtype`. Every index of each operand
    must appear in the other operand or the output (true of the model's matmuls), so the
    gradients are einsums too."""
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.einsum(subscripts, a.astype(dtype), b.astype(dtype))
    if _batched(subscripts):
        # XLA's CPU runtime has no bf16 x bf16 -> f32 kernel for every batched layout
        # (attention's q.k and p.v and their transposes); these small products run in fp32.
        return jnp.einsum(subscripts, a.astype(jnp.float32), b.astype(jnp.float32)).astype(dtype)
    return _low_einsum(subscripts, jnp.dtype(dtype), a, b)


def _batched(subscripts: str) -> bool:
    (spec_a, spec_b), spec_out = subscripts.split("->")[0].split(","), subscripts.split("->")[1]
    return bool((set(spec_a) & set(spec_b) & set(spec_out)) - {"."})


def _dot(subscripts, x, y, dtype):
    return jnp.einsum(subscripts, x.astype(dtype), y.astype(dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _low_einsum(subscripts, dtype, a, b):
    return _dot(subscripts, a, b, dtype).astype(dtype)


def _low_einsum_fwd(subscripts, dtype, a, b):
    return _low_einsum(subscripts, dtype, a, b), (a, b)


def einsum_grads(subscripts: str, a: jax.Array, b: jax.Array, g: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """The gradients of `einsum(subscripts, a, b)` with respect to `a` and `b` for the output
    cotangent `g`: the two transposed products, in `dtype` with fp32 accumulation, returned in
    `a`'s and `b`'s dtypes."""
    (spec_a, spec_b), spec_out = subscripts.split("->")[0].split(","), subscripts.split("->")[1]
    if _batched(subscripts):  # see `einsum`
        dtype = jnp.float32
    ga = _dot(f"{spec_out},{spec_b}->{spec_a}", g, b, dtype)
    gb = _dot(f"{spec_a},{spec_out}->{spec_b}", a, g, dtype)
    return ga.astype(a.dtype), gb.astype(b.dtype)


def _low_einsum_bwd(subscripts, dtype, res, g):
    return einsum_grads(subscripts, *res, g, dtype)


_low_einsum.defvjp(_low_einsum_fwd, _low_einsum_bwd)
