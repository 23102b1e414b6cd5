"""`quant.compute="codes"`: products of two quantized operands computed on their integer codes.

Per product (`codes_product`): the int32 accumulation is exact and the scaled result is the real
product of the quantized operands up to float32 rounding of the scale multiply. (`codes_einsum`
against fake mode is in test_codes_einsum, whole models in test_codes_model and test_codes_student.)
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax.model.codes_matmul import codes_einsum, codes_product
from dq_jax.quant import policy
from dq_jax.quant.codes import Codes
from dq_jax.quant.config import QuantConfig
from dq_jax.quant.policy import ActRole, Role
from tests.codes_helpers import _rel

# ----------------------------------------------------------------------------- codes_product


def _random_codes(rng, shape, bits, scales_shape, axes, unsigned=False) -> Codes:
    """Codes over the whole range `[-bound, bound]` (`[0, bound]` unsigned), random positive scales."""
    bound = 2 ** (bits - 1)
    if bits == 1 and not unsigned:
        values = rng.choice([-1, 1], shape)
    else:
        values = rng.randint(0 if unsigned else -bound, bound + 1, shape)
    scales = rng.uniform(0.5, 2.0, scales_shape) * 10.0 ** rng.uniform(-3, 0)
    return Codes(jnp.asarray(values, jnp.int8), jnp.asarray(scales, jnp.float32), bits, axes)


def _exact(subscripts, a: Codes, b: Codes) -> np.ndarray:
    """The real product of the quantized operands, from their codes in int64 and float64 scales."""
    acc = np.einsum(subscripts, np.asarray(a.values, np.int64), np.asarray(b.values, np.int64))
    scale = np.einsum(subscripts, np.asarray(a.scales, np.float64), np.asarray(b.scales, np.float64))
    return acc * scale


def _dequantized64(subscripts, a: Codes, b: Codes) -> np.ndarray:
    """The float64 product of the dequantized (float32) operands."""
    return np.einsum(subscripts, np.asarray(a.dequantize(), np.float64), np.asarray(b.dequantize(), np.float64))


# (subscripts, shape a, bits a, scales a, axes a, shape b, bits b, scales b, axes b): dense per
# example x per output row and per tensor x per tensor, q.k per example, p.v per tensor
PRODUCTS = {
    "dense 8x8 example-row": ("...i,io->...o", (4, 6, 512), 8, (4, 1, 1), (1, 2), (512, 10), 8, (1, 10), (0,)),
    "dense 8x2 tensor": ("...i,io->...o", (3, 5, 96), 8, (1, 1, 1), (0, 1, 2), (96, 7), 2, (1, 1), (0, 1)),
    "dense 4x1 example-row": ("...i,io->...o", (2, 3, 64), 4, (2, 1, 1), (1, 2), (64, 5), 1, (1, 5), (0,)),
    "q.k 8x8": (
        "bhtd,bhsd->bhts",
        (3, 2, 5, 16),
        8,
        (3, 1, 1, 1),
        (1, 2, 3),
        (3, 2, 7, 16),
        8,
        (3, 1, 1, 1),
        (1, 2, 3),
    ),
    "p.v 8x8": (
        "bhts,bhsd->bthd",
        (3, 2, 5, 7),
        8,
        (1, 1, 1, 1),
        (0, 1, 2, 3),
        (3, 2, 7, 16),
        8,
        (1, 1, 1, 1),
        (0, 1, 2, 3),
    ),
}


@pytest.mark.parametrize("name", list(PRODUCTS))
def test_codes_product_is_exact_then_scaled(name):
    subscripts, sa, ba, ssa, aa, sb, bb, ssb, ab = PRODUCTS[name]
    rng = np.random.RandomState(0)
    a, b = _random_codes(rng, sa, ba, ssa, aa), _random_codes(rng, sb, bb, ssb, ab)
    acc = np.einsum(subscripts, np.asarray(a.values, np.int64), np.asarray(b.values, np.int64))
    # unit scales: the output is the integer accumulation itself (exact in float32 below 2**24)
    assert np.abs(acc).max() < 2**24
    unit = lambda c: Codes(c.values, jnp.ones_like(c.scales), c.bits, c.axes)
    np.testing.assert_array_equal(np.asarray(codes_product(subscripts, unit(a), unit(b))), acc)
    # with scales: the exact product up to the rounding of the scale product and of one multiply
    y = np.asarray(codes_product(subscripts, a, b))
    assert y.dtype == np.float32 and y.shape == acc.shape
    exact = _exact(subscripts, a, b)
    nz = exact != 0
    np.testing.assert_array_equal(y[~nz], 0.0)
    assert np.max(np.abs(y[nz] - exact[nz]) / np.abs(exact[nz])) <= 3 * 2.0**-24
    # against the float64 product of the dequantized operands: closer than fake mode's fp32 einsum
    ref = _dequantized64(subscripts, a, b)
    fake = np.asarray(jnp.einsum(subscripts, a.dequantize(), b.dequantize()))
    assert _rel(y, ref) <= 1e-6, _rel(y, ref)
    assert _rel(y, exact) <= _rel(fake, exact), (_rel(y, exact), _rel(fake, exact))


def test_int32_accumulation_is_exact_where_float32_partial_sums_round():
    """130064 products of 8-bit codes whose partial sums reach 2**30 (far beyond float32's exact
    integers, 2**24) and cancel to a small total: int32 accumulation gets the total exactly,
    where an fp32 einsum of the same values rounds on the way (2048 instead of 2054 on XLA:CPU)."""
    rng = np.random.RandomState(1)
    n = 65000
    c = rng.randint(100, 128, n)
    tail_a, tail_b = rng.randint(-128, 128, 64), rng.randint(-128, 128, 64)
    va = np.concatenate([np.full(n, 127), np.full(n, -127), tail_a])
    vb = np.concatenate([c, c, tail_b])
    want = int(np.dot(tail_a.astype(np.int64), tail_b))
    assert int(np.dot(va.astype(np.int64), vb)) == want and abs(want) < 2**24
    a = Codes(jnp.asarray(va[None], jnp.int8), jnp.ones((1, 1), jnp.float32), 8, (0, 1))
    b = Codes(jnp.asarray(vb[:, None], jnp.int8), jnp.ones((1, 1), jnp.float32), 8, (0, 1))
    assert float(codes_product("ti,io->to", a, b)[0, 0]) == want
    fp32 = float(jnp.einsum("ti,io->to", a.dequantize(), b.dequantize())[0, 0])
    print(f"exact {want}, codes {want}, fp32 einsum {fp32}")


@pytest.mark.parametrize("per_example", [False, True], ids=["offset per tensor", "offset per example"])
def test_codes_product_with_an_offset_operand(per_example):
    """TBT's unsigned elastic activations: `q_a = c_a * s_a + o_a`, o_a their minimum."""
    rng = np.random.RandomState(2)
    cases = [
        ("...i,io->...o", (4, 6, 40), (4, 1, 1) if per_example else (1, 1, 1), (40, 9), (1, 9), (0,)),
        (
            "bhts,bhsd->bthd",
            (3, 2, 5, 7),
            (3, 1, 1, 1) if per_example else (1, 1, 1, 1),
            (3, 2, 7, 8),
            (1, 1, 1, 1),
            (0, 1, 2, 3),
        ),
    ]
    for subscripts, sa, so, sb, ssb, ab in cases:
        a = _random_codes(rng, sa, 2, (1,) * len(sa), tuple(range(len(sa))), unsigned=True)
        a = dataclasses.replace(a, offset=jnp.asarray(rng.randn(*so), jnp.float32))
        b = _random_codes(rng, sb, 8, ssb, ab)
        y = np.asarray(codes_product(subscripts, a, b))
        ref = _dequantized64(subscripts, a, b)
        assert y.shape == ref.shape
        assert _rel(y, ref) <= 1e-6, (subscripts, _rel(y, ref))
        # the offset matters: dropping it changes the result
        assert _rel(codes_product(subscripts, dataclasses.replace(a, offset=None), b), ref) > 1e-2
        with pytest.raises(ValueError, match="only the first operand"):
            codes_product(subscripts, a, a)


def test_overflow_guard():
    """`K * bound_a * bound_b` must stay below 2**31: 8-bit codes allow K < 2**17."""
    k = 2**31 // (128 * 128)  # 131072

    def codes(shape, value, bits=8):
        return Codes(jnp.full(shape, value, jnp.int8), jnp.ones((1, 1), jnp.float32), bits, (0, 1))

    with pytest.raises(ValueError, match="overflow int32"):
        codes_product("ti,io->to", codes((1, k), 0), codes((k, 1), 0))
    # the same in the attention layout: the contracted d of "bhtd,bhsd->bhts"
    big = Codes(jnp.zeros((1, 1, 1, k), jnp.int8), jnp.ones((1, 1, 1, 1), jnp.float32), 8, (0, 1, 2, 3))
    with pytest.raises(ValueError, match="overflow int32"):
        codes_product("bhtd,bhsd->bhts", big, big)
    # narrower codes allow more: 1-bit x 8-bit codes reach 2**24 - 1 products
    codes_product("ti,io->to", codes((1, k), 1, bits=1), codes((k, 1), 1))
    # one product less than the limit, every code at the bound -128: the largest sum int32 holds
    y = codes_product("ti,io->to", codes((1, k - 1), -128), codes((k - 1, 1), -128))
    assert float(y[0, 0]) == (k - 1) * 128 * 128 == 2**31 - 2**14


def test_one_bit_products_keep_their_exact_zeros():
    """Sums of +-1 codes are often exactly 0, which the next 1-bit quantizer maps to +1. Codes
    mode gets those zeros exactly (fake mode's float partial sums may leave a 1-ulp residual of
    either sign, the source of the W1A1 differences measured in `test_model_codes_vs_fake`)."""
    rng = np.random.RandomState(3)
    q = QuantConfig(1, 1, 1, method="tbt")
    x = jnp.asarray(rng.randn(4, 6, 32), jnp.float32)
    w = jnp.asarray(rng.randn(32, 16), jnp.float32)
    ra, rw = policy.act_rule(ActRole.LINEAR_INPUT, q), policy.weight_rule(Role.LINEAR, q)
    alpha = jnp.float32(0.37)
    y = np.asarray(codes_einsum("...i,io->...o", x, w, ra, rw, alpha))
    exact = _exact("...i,io->...o", ra.codes(x, alpha), rw.codes(w))
    assert (exact == 0).mean() > 0.05  # a meaningful test: many exact zeros
    np.testing.assert_array_equal(y == 0, exact == 0)
    np.testing.assert_array_equal(np.sign(y), np.sign(exact))
    fake = np.asarray(jnp.einsum("...i,io->...o", ra.fake(x, alpha), rw.fake(w)))
    print(
        f"1-bit product: {(exact == 0).sum()} exact zeros; fake mode leaves {((exact == 0) & (fake != 0)).sum()} "
        f"nonzero, {((exact == 0) & (fake < 0)).sum()} of them negative"
    )
