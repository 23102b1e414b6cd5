"""Quantizers: exact expected values (symmetric, TWN, BWN, MSE and activation tables)."""

import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax import quant
from tests.quant_helpers import S, assert_bitwise_equal

# Symmetric tables: code = round_half_even(x * 64), q = code / 64. Ties are noted as k.5.
SYMMETRIC = {
    2: (
        [1 * S, -1 * S, 0.5 * S, -0.5 * S, 0.01, 0.0],  # n = 1, 0.01*64 = 0.64
        [1 * S, -1 * S, 0.0, 0.0, 1 * S, 0.0],
    ),
    3: (
        [3 * S, -1.5 * S, 0.5 * S, 2.5 * S, 0.02],  # n = 3, 0.02*64 = 1.28
        [3 * S, -2 * S, 0.0, 2 * S, 1 * S],
    ),
    4: (
        [-7 * S, 3.5 * S, 5.5 * S, -4.5 * S, 0.05],  # n = 7, 0.05*64 = 3.2
        [-7 * S, 4 * S, 6 * S, -4 * S, 3 * S],
    ),
    5: (
        [15 * S, 11.5 * S, 13.5 * S, -1.5 * S, 0.1],  # n = 15, 0.1*64 = 6.4
        [15 * S, 12 * S, 14 * S, -2 * S, 6 * S],
    ),
    6: (
        [31 * S, -30.5 * S, 25.5 * S, 0.0, 0.3],  # n = 31, 0.3*64 = 19.2
        [31 * S, -30 * S, 26 * S, 0.0, 19 * S],
    ),
    7: (
        [-63 * S, 62.5 * S, 42.5 * S, 0.5 * S, 0.5],  # n = 63, 0.5*64 = 32
        [-63 * S, 62 * S, 42 * S, 0.0, 32 * S],
    ),
    8: (
        [127 * S, -126.5 * S, 64.5 * S, 1.5 * S, 1.2],  # n = 127, 1.2*64 = 76.8
        [127 * S, -126 * S, 64 * S, 2 * S, 77 * S],
    ),
}


@pytest.mark.parametrize("bits", sorted(SYMMETRIC))
def test_symmetric_table_per_tensor(bits):
    x, expected = SYMMETRIC[bits]
    q = quant.symmetric(jnp.array(x, jnp.float32), bits)
    assert q.dtype == jnp.float32
    np.testing.assert_array_equal(q, np.array(expected, np.float32))
    c = quant.symmetric_codes(jnp.array(x, jnp.float32), bits)
    codes, scales = c.values, c.scales
    np.testing.assert_array_equal(codes, np.round(np.array(expected) * 64).astype(np.int8))
    assert codes.dtype == jnp.int8 and scales.dtype == jnp.float32
    assert scales.shape == (1,) and float(scales[0]) == S


@pytest.mark.parametrize("bits", sorted(SYMMETRIC))
def test_symmetric_table_per_row_with_zero_row(bits):
    x, expected = SYMMETRIC[bits]
    # Row 1 is row 0 halved (exact in binary): its own scale halves, so its codes are the same.
    x2 = np.array([x, [v / 2 for v in x], [0.0] * len(x)], np.float32)
    want = np.array([expected, [v / 2 for v in expected], [0.0] * len(x)], np.float32)
    q = quant.symmetric(x2, bits, reduce_axes=(-1,))
    np.testing.assert_array_equal(q, want)
    c = quant.symmetric_codes(x2, bits, reduce_axes=-1)
    _, scales = c.values, c.scales
    np.testing.assert_array_equal(scales, [[S], [S / 2], [1.0]])


@pytest.mark.parametrize(
    "bits, codes, step",
    [
        # x = [3, -7, 1, 0] clamps to [2.5, -2.5, 1, 0]; n / m = 127 / 2.5 = 50.8, 1 * 50.8 -> 51.
        (8, [127, -127, 51, 0], 2.5 / 127),
        # n / m = 7 / 2.5 = 2.8, 1 * 2.8 -> 3.
        (4, [7, -7, 3, 0], 2.5 / 7),
    ],
)
def test_symmetric_clamps_beyond_clip(bits, codes, step):
    x = jnp.array([3.0, -7.0, 1.0, 0.0])
    c = quant.symmetric_codes(x, bits)
    got_codes, scales = c.values, c.scales
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_allclose(scales, [step], rtol=1e-7)
    q = quant.symmetric(x, bits)
    # n * fl(2.5 / n) == 2.5 exactly in float32 for these n, so the clamped values come back.
    assert q[0] == 2.5 and q[1] == -2.5 and q[3] == 0.0
    np.testing.assert_allclose(q[2], codes[2] * step, rtol=1e-6)


def test_symmetric_single_element_and_scalar():
    # A lone element is its own max: code n, q == x up to the scale's rounding.
    q = quant.symmetric(jnp.array([0.7]), 8)
    np.testing.assert_allclose(q, [0.7], rtol=2e-7)
    c = quant.symmetric_codes(jnp.float32(-0.3), 4)
    codes, scales = c.values, c.scales
    assert codes.shape == () and int(codes) == -7 and scales.shape == ()
    np.testing.assert_allclose(quant.symmetric(jnp.float32(-0.3), 4), -0.3, rtol=2e-7)
    np.testing.assert_array_equal(quant.symmetric(jnp.float32(5.0), 8), 2.5)


def test_symmetric_scale_shapes():
    x = jnp.ones((2, 3, 4))
    for axes, shape in [
        (None, (1, 1, 1)),
        (-1, (2, 3, 1)),
        ((-1,), (2, 3, 1)),
        ((0, 2), (1, 3, 1)),
        ((2, 0, -1), (1, 3, 1)),
        ((), (2, 3, 4)),
    ]:
        assert quant.symmetric_codes(x, 8, reduce_axes=axes).scales.shape == shape, axes


def test_symmetric_bf16():
    # All values and results are exact in bfloat16 (8 significant bits); max = 127/64.
    x = jnp.array([127 * S, -126.5 * S, 64.5 * S, 1.5 * S], jnp.bfloat16)
    q = quant.symmetric(x, 8)
    assert q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(q.astype(jnp.float32), [127 * S, -126 * S, 64 * S, 2 * S])
    c = quant.symmetric_codes(x, 8)
    _codes, scales = c.values, c.scales
    assert scales.dtype == jnp.float32 and float(scales[0]) == S


# TWN: |xc| = [1.5, 2, .5, .25, .125, 0, 2.5 (3 clamped), .625], mean = 7.5 / 8 = .9375,
# delta = .65625, kept: 1.5, 2, 2.5 -> alpha = 6 / 3 = 2.
TERNARY_X = [1.5, -2.0, 0.5, 0.25, -0.125, 0.0, 3.0, -0.625]
TERNARY_Q = [2.0, -2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]
# mean|x| = 2.1 / 8 = .2625, delta = .18375, kept: the four 0.5s -> alpha = .5.
TERNARY_X2 = [0.5, -0.5, 0.5, -0.5, 0.1, 0.0, 0.0, 0.0]
TERNARY_Q2 = [0.5, -0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]


def test_ternary_table():
    q = quant.ternary(jnp.array(TERNARY_X))
    np.testing.assert_array_equal(q, TERNARY_Q)
    c = quant.ternary_codes(jnp.array(TERNARY_X))
    codes, scales = c.values, c.scales
    np.testing.assert_array_equal(codes, [1, -1, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(scales, [2.0])
    x = jnp.array([TERNARY_X, [0.0] * 8, TERNARY_X2])
    np.testing.assert_array_equal(quant.ternary(x, reduce_axes=-1), [TERNARY_Q, [0.0] * 8, TERNARY_Q2])
    np.testing.assert_array_equal(quant.ternary_codes(x, reduce_axes=-1).scales, [[2.0], [1.0], [0.5]])
    # Per tensor: |x| sums to 7.5 + 0 + 2.1 over 24 -> delta = .7 * .4 = .28; kept 1.5, 2, .5,
    # 2.5, .625 and the four .5s -> alpha = (7.125 + 2) / 9.
    np.testing.assert_allclose(quant.ternary_codes(x).scales, [[9.125 / 9]], rtol=1e-6)


def test_ternary_bf16_and_single_element():
    q = quant.ternary(jnp.array(TERNARY_X, jnp.bfloat16))
    assert q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(q.astype(jnp.float32), TERNARY_Q)
    # One element: delta = .7 |x| < |x|, so alpha = |x| and q == x.
    np.testing.assert_array_equal(quant.ternary(jnp.array([-0.7])), np.float32([-0.7]))


# BWN: |xc| = [1.5, 2, .5, 0, 2.5, .5, .25, .75] sums to 8 -> alpha = 1; 0 maps to +1.
BINARY_X = [1.5, -2.0, 0.5, 0.0, 3.0, -0.5, -0.25, 0.75]
BINARY_C = [1, -1, 1, 1, 1, -1, -1, 1]
# |x| sums to 3.5 -> alpha = 3.5 / 8 = .4375.
BINARY_X2 = [0.25, -0.25, -1.0, 1.0, 0.5, -0.5, 0.0, 0.0]
BINARY_C2 = [1, -1, -1, 1, 1, -1, 1, 1]


def test_binary_table():
    np.testing.assert_array_equal(quant.binary(jnp.array(BINARY_X)), np.float32(BINARY_C))
    c = quant.binary_codes(jnp.array(BINARY_X))
    codes, scales = c.values, c.scales
    np.testing.assert_array_equal(codes, BINARY_C)
    np.testing.assert_array_equal(scales, [1.0])
    x = jnp.array([BINARY_X, [0.0] * 8, BINARY_X2])
    q = quant.binary(x, reduce_axes=-1)
    np.testing.assert_array_equal(q, [BINARY_C, [0.0] * 8, [0.4375 * c for c in BINARY_C2]])
    c = quant.binary_codes(x, reduce_axes=-1)
    codes, scales = c.values, c.scales
    np.testing.assert_array_equal(codes, [BINARY_C, [1] * 8, BINARY_C2])
    np.testing.assert_array_equal(scales, [[1.0], [0.0], [0.4375]])
    qb = quant.binary(jnp.array(BINARY_X, jnp.bfloat16))
    assert qb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(qb.astype(jnp.float32), BINARY_C)
    np.testing.assert_array_equal(quant.binary(jnp.array([-0.3])), np.float32([-0.3]))


def test_mse_tables():
    # bits=2 (n=1): alpha0 = 1, b = round([1, .625, .625, 0]) = [1, 1, 1, 0],
    # alpha = 2.25 / 3 = .75; b = round(x / .75) = [1, 1, 1, 0] again: fixed point.
    x = jnp.array([1.0, 0.625, 0.625, 0.0])
    np.testing.assert_array_equal(quant.mse(x, 2), [0.75, 0.75, 0.75, 0.0])
    # bits=3 (n=3): alpha0 = 2/3, b = round([3, 1.8, -1.2, .3]) = [3, 2, -1, 0],
    # alpha = (6 + 2.4 + .8) / (9 + 4 + 1) = 9.2 / 14; b is unchanged from then on.
    x = jnp.array([2.0, 1.2, -0.8, 0.2])
    c = quant.mse_codes(x, 3)
    codes, scales = c.values, c.scales
    np.testing.assert_array_equal(codes, [3, 2, -1, 0])
    np.testing.assert_allclose(scales, [9.2 / 14], rtol=1e-6)
    np.testing.assert_allclose(quant.mse(x, 3), [3 * 9.2 / 14, 2 * 9.2 / 14, -9.2 / 14, 0], rtol=1e-6)
    # Per row, with an all-zero row and a row beyond the clip (clamped to [2.5, -2.5]:
    # alpha0 = 2.5 = the LS fit of b = [1, -1], so it stays).
    x = jnp.array([[1.0, 0.625, 0.625, 0.0], [0.0] * 4, [3.0, -7.0, 0.0, 0.0]])
    np.testing.assert_array_equal(
        quant.mse(x, 2, reduce_axes=-1), [[0.75, 0.75, 0.75, 0.0], [0.0] * 4, [2.5, -2.5, 0.0, 0.0]]
    )
    qb = quant.mse(jnp.array([1.0, 0.625, 0.625, 0.0], jnp.bfloat16), 2)
    assert qb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(qb.astype(jnp.float32), [0.75, 0.75, 0.75, 0.0])
    np.testing.assert_allclose(quant.mse(jnp.array([0.3]), 8), [0.3], rtol=2e-7)


def test_activation():
    # Per tensor: max = 127/64 -> step 1/64: .24*64 = 15.36 -> 15, -.1*64 = -6.4 -> -6.
    # Per example, row 1: max = .24, n / m = 529.17: -.1 -> -52.9 -> -53, q = -53 * .24 / 127.
    x = jnp.array([[127 * S, 64.5 * S, 0.0], [0.24, -0.1, 0.0]])
    np.testing.assert_array_equal(quant.activation(x, 8), [[127 * S, 64 * S, 0.0], [15 * S, -6 * S, 0.0]])
    assert_bitwise_equal(quant.activation(x, 8), quant.symmetric(x, 8))
    q = quant.activation(x, 8, per_example=True)
    np.testing.assert_array_equal(q[0], [127 * S, 64 * S, 0.0])
    np.testing.assert_allclose(q[1], [0.24, -53 * 0.24 / 127, 0.0], rtol=1e-6)
