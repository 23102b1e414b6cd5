"""Quantizers, every family alike: all-zero and extreme inputs, STE gradients, vmap, bad
arguments, and export parity (packed codes rebuild the weights bit for bit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax import quant
from dq_jax.quant import packing
from tests.quant_helpers import SHAPE, assert_bitwise_equal

ALL = {
    "symmetric": lambda x, **kw: quant.symmetric(x, 4, **kw),
    "symmetric8": lambda x, **kw: quant.symmetric(x, 8, **kw),
    "ternary": quant.ternary,
    "binary": quant.binary,
    "mse": lambda x, **kw: quant.mse(x, 3, **kw),
}
CODES = {
    "symmetric": lambda x, **kw: quant.symmetric_codes(x, 4, **kw),
    "symmetric8": lambda x, **kw: quant.symmetric_codes(x, 8, **kw),
    "ternary": quant.ternary_codes,
    "binary": quant.binary_codes,
    "mse": lambda x, **kw: quant.mse_codes(x, 3, **kw),
}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("axes", [None, -1])
def test_all_zero_input_gives_zeros(name, axes):
    for dtype in (jnp.float32, jnp.bfloat16):
        q = ALL[name](jnp.zeros(SHAPE, dtype), reduce_axes=axes)
        assert q.dtype == dtype
        np.testing.assert_array_equal(q.astype(jnp.float32), np.zeros(SHAPE))
    c = CODES[name](jnp.zeros(SHAPE), reduce_axes=axes)
    _codes, scales = c.values, c.scales
    assert np.isfinite(np.asarray(scales)).all()
    grad = jax.grad(lambda x: ALL[name](x, reduce_axes=axes).sum())(jnp.zeros(SHAPE))
    np.testing.assert_array_equal(grad, np.ones(SHAPE))


@pytest.mark.parametrize("name", sorted(ALL))
def test_zero_row_does_not_touch_other_rows(name):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=SHAPE).astype(np.float32)
    with_zero = rows.copy()
    with_zero[1] = 0.0
    q = np.asarray(ALL[name](jnp.array(with_zero), reduce_axes=-1))
    ref = np.asarray(ALL[name](jnp.array(rows), reduce_axes=-1))
    np.testing.assert_array_equal(q[1], np.zeros(6))
    np.testing.assert_array_equal(q[[0, 2]], ref[[0, 2]])


@pytest.mark.parametrize("name", sorted(ALL))
def test_extreme_magnitudes_stay_finite(name):
    # Huge values clamp to the clip; groups of subnormal / near-underflow values act as zeros.
    x = jnp.array(
        [
            [3.4e38, -3.4e38, 1.0, 0.0, -1e30, 1e-30],
            [1e-45, -1e-38, 1e-37, 0.0, -2e-39, 1e-40],
            [-0.0, 0.0, -0.0, 0.0, 0.0, 0.0],
        ],
        jnp.float32,
    )
    for axes in (None, -1):
        q = np.asarray(ALL[name](x, reduce_axes=axes))
        assert np.isfinite(q).all()
        if name != "mse":  # the least-squares scale may put the top level past the clip
            assert np.abs(q).max() <= 2.5
    np.testing.assert_array_equal(np.asarray(ALL[name](x, reduce_axes=-1))[1:], np.zeros((2, 6)))


# x: outside, exactly at -clip, inside (x3), exactly at +clip, outside.
GRAD_X = [-3.0, -2.5, -2.4, 0.0, 1.0, 2.5, 2.6]
GRAD_MASK = [0, 0, 1, 1, 1, 0, 0]
GRAD_W = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


@pytest.mark.parametrize("name", sorted(ALL))
def test_ste_gradient(name):
    w = jnp.array(GRAD_W)

    def loss(x):
        return jnp.sum(ALL[name](x) * w)

    want = np.multiply(GRAD_W, GRAD_MASK)
    x = jnp.array(GRAD_X)
    np.testing.assert_array_equal(jax.grad(loss)(x), want)
    np.testing.assert_array_equal(jax.jit(jax.grad(loss))(x), want)
    # Rows: x, x / 2 (all inside the clip), -x.
    xs = jnp.array([GRAD_X, [v / 2 for v in GRAD_X], [-v for v in GRAD_X]])
    masks = np.array([GRAD_MASK, [1] * 7, GRAD_MASK])
    got = jax.jit(jax.vmap(jax.grad(loss)))(xs)
    np.testing.assert_array_equal(got, masks * np.array(GRAD_W))
    gb = jax.grad(lambda x: jnp.sum(ALL[name](x).astype(jnp.float32)))(x.astype(jnp.bfloat16))
    assert gb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(gb.astype(jnp.float32), GRAD_MASK)


@pytest.mark.parametrize("name", sorted(ALL))
def test_vmap_of_per_tensor_equals_per_row(name):
    x = jnp.array(np.random.default_rng(1).normal(size=SHAPE).astype(np.float32))
    assert_bitwise_equal(jax.vmap(ALL[name])(x), ALL[name](x, reduce_axes=-1))
    assert_bitwise_equal(jax.jit(ALL[name])(x), ALL[name](x))


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bad_bits_raise(bits):
    for fn in (quant.symmetric, quant.mse, quant.symmetric_codes, quant.mse_codes):
        with pytest.raises(ValueError, match=rf"bits={bits}.*2\.\.8"):
            fn(jnp.ones(3), bits)


def test_bad_axis_raises():
    with pytest.raises(ValueError, match="out of range"):
        quant.symmetric(jnp.ones((2, 3)), 8, reduce_axes=(2,))


def test_packing_is_reexported():
    assert quant.pack is packing.pack and quant.unpack is packing.unpack
    assert quant.packed_nbytes is packing.packed_nbytes


@pytest.mark.parametrize(
    "name, codes_fn, bits",
    [
        ("symmetric2", lambda x: quant.symmetric_codes(x, 2, reduce_axes=-1), 2),
        ("symmetric4", lambda x: quant.symmetric_codes(x, 4, reduce_axes=-1), 4),
        ("symmetric8", lambda x: quant.symmetric_codes(x, 8), 8),
        ("ternary", lambda x: quant.ternary_codes(x, reduce_axes=-1), 2),
        ("binary", lambda x: quant.binary_codes(x, reduce_axes=-1), 1),
        ("mse4", lambda x: quant.mse_codes(x, 4), 4),
    ],
)
def test_export_round_trip_in_numpy(name, codes_fn, bits):
    """Packed codes plus fp32 scales rebuild the training-time weights bit for bit in NumPy."""
    fake = {
        "symmetric2": lambda x: quant.symmetric(x, 2, reduce_axes=-1),
        "symmetric4": lambda x: quant.symmetric(x, 4, reduce_axes=-1),
        "symmetric8": lambda x: quant.symmetric(x, 8),
        "ternary": lambda x: quant.ternary(x, reduce_axes=-1),
        "binary": lambda x: quant.binary(x, reduce_axes=-1),
        "mse4": lambda x: quant.mse(x, 4),
    }[name]
    x = jnp.array(np.random.default_rng(2).normal(size=(5, 7)).astype(np.float32))
    c = codes_fn(x)
    codes, scales = c.values, c.scales
    packed = packing.pack(np.asarray(codes), bits)
    rebuilt = packing.unpack(packed, bits, x.shape).astype(np.float32) * np.asarray(scales)
    assert_bitwise_equal(rebuilt, fake(x))
