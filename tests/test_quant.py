"""Quantizers: exact expected values, STE gradients, invariants (hypothesis), export parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dq_jax.quant import packing
from dq_jax import quant

PROPS = settings(max_examples=50, deadline=None)
SHAPE = (3, 6)  # most tests share it, so compiled quantizers are reused
S = 1 / 64  # the step of every symmetric table below: max|x| = n / 64, so n / max|x| = 64


def bits_of(a):
    return np.asarray(a).view(np.uint32 if np.asarray(a).dtype == np.float32 else np.uint16)


def assert_bitwise_equal(a, b):
    np.testing.assert_array_equal(bits_of(a), bits_of(b))


# Symmetric tables: code = round_half_even(x * 64), q = code / 64. Ties are noted as k.5.
SYMMETRIC = {
    2: ([1 * S, -1 * S, 0.5 * S, -0.5 * S, 0.01, 0.0],  # n = 1, 0.01*64 = 0.64
        [1 * S, -1 * S, 0.0, 0.0, 1 * S, 0.0]),
    3: ([3 * S, -1.5 * S, 0.5 * S, 2.5 * S, 0.02],  # n = 3, 0.02*64 = 1.28
        [3 * S, -2 * S, 0.0, 2 * S, 1 * S]),
    4: ([-7 * S, 3.5 * S, 5.5 * S, -4.5 * S, 0.05],  # n = 7, 0.05*64 = 3.2
        [-7 * S, 4 * S, 6 * S, -4 * S, 3 * S]),
    5: ([15 * S, 11.5 * S, 13.5 * S, -1.5 * S, 0.1],  # n = 15, 0.1*64 = 6.4
        [15 * S, 12 * S, 14 * S, -2 * S, 6 * S]),
    6: ([31 * S, -30.5 * S, 25.5 * S, 0.0, 0.3],  # n = 31, 0.3*64 = 19.2
        [31 * S, -30 * S, 26 * S, 0.0, 19 * S]),
    7: ([-63 * S, 62.5 * S, 42.5 * S, 0.5 * S, 0.5],  # n = 63, 0.5*64 = 32
        [-63 * S, 62 * S, 42 * S, 0.0, 32 * S]),
    8: ([127 * S, -126.5 * S, 64.5 * S, 1.5 * S, 1.2],  # n = 127, 1.2*64 = 76.8
        [127 * S, -126 * S, 64 * S, 2 * S, 77 * S]),
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


@pytest.mark.parametrize("bits, codes, step", [
    # x = [3, -7, 1, 0] clamps to [2.5, -2.5, 1, 0]; n / m = 127 / 2.5 = 50.8, 1 * 50.8 -> 51.
    (8, [127, -127, 51, 0], 2.5 / 127),
    # n / m = 7 / 2.5 = 2.8, 1 * 2.8 -> 3.
    (4, [7, -7, 3, 0], 2.5 / 7),
])
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
    for axes, shape in [(None, (1, 1, 1)), (-1, (2, 3, 1)), ((-1,), (2, 3, 1)),
                        ((0, 2), (1, 3, 1)), ((2, 0, -1), (1, 3, 1)), ((), (2, 3, 4))]:
        assert quant.symmetric_codes(x, 8, reduce_axes=axes).scales.shape == shape, axes


def test_symmetric_bf16():
    # All values and results are exact in bfloat16 (8 significant bits); max = 127/64.
    x = jnp.array([127 * S, -126.5 * S, 64.5 * S, 1.5 * S], jnp.bfloat16)
    q = quant.symmetric(x, 8)
    assert q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(q.astype(jnp.float32), [127 * S, -126 * S, 64 * S, 2 * S])
    c = quant.symmetric_codes(x, 8)
    codes, scales = c.values, c.scales
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
    np.testing.assert_array_equal(quant.ternary(x, reduce_axes=-1),
                                  [TERNARY_Q, [0.0] * 8, TERNARY_Q2])
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
    np.testing.assert_allclose(quant.mse(x, 3), [3 * 9.2 / 14, 2 * 9.2 / 14, -9.2 / 14, 0],
                               rtol=1e-6)
    # Per row, with an all-zero row and a row beyond the clip (clamped to [2.5, -2.5]:
    # alpha0 = 2.5 = the LS fit of b = [1, -1], so it stays).
    x = jnp.array([[1.0, 0.625, 0.625, 0.0], [0.0] * 4, [3.0, -7.0, 0.0, 0.0]])
    np.testing.assert_array_equal(quant.mse(x, 2, reduce_axes=-1),
                                  [[0.75, 0.75, 0.75, 0.0], [0.0] * 4, [2.5, -2.5, 0.0, 0.0]])
    qb = quant.mse(jnp.array([1.0, 0.625, 0.625, 0.0], jnp.bfloat16), 2)
    assert qb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(qb.astype(jnp.float32), [0.75, 0.75, 0.75, 0.0])
    np.testing.assert_allclose(quant.mse(jnp.array([0.3]), 8), [0.3], rtol=2e-7)


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
    codes, scales = c.values, c.scales
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
    x = jnp.array([[3.4e38, -3.4e38, 1.0, 0.0, -1e30, 1e-30],
                   [1e-45, -1e-38, 1e-37, 0.0, -2e-39, 1e-40],
                   [-0.0, 0.0, -0.0, 0.0, 0.0, 0.0]], jnp.float32)
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


def test_activation():
    # Per tensor: max = 127/64 -> step 1/64: .24*64 = 15.36 -> 15, -.1*64 = -6.4 -> -6.
    # Per example, row 1: max = .24, n / m = 529.17: -.1 -> -52.9 -> -53, q = -53 * .24 / 127.
    x = jnp.array([[127 * S, 64.5 * S, 0.0], [0.24, -0.1, 0.0]])
    np.testing.assert_array_equal(quant.activation(x, 8),
                                  [[127 * S, 64 * S, 0.0], [15 * S, -6 * S, 0.0]])
    assert_bitwise_equal(quant.activation(x, 8), quant.symmetric(x, 8))
    q = quant.activation(x, 8, per_example=True)
    np.testing.assert_array_equal(q[0], [127 * S, 64 * S, 0.0])
    np.testing.assert_allclose(q[1], [0.24, -53 * 0.24 / 127, 0.0], rtol=1e-6)


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


@pytest.mark.parametrize("name, codes_fn, bits", [
    ("symmetric2", lambda x: quant.symmetric_codes(x, 2, reduce_axes=-1), 2),
    ("symmetric4", lambda x: quant.symmetric_codes(x, 4, reduce_axes=-1), 4),
    ("symmetric8", lambda x: quant.symmetric_codes(x, 8), 8),
    ("ternary", lambda x: quant.ternary_codes(x, reduce_axes=-1), 2),
    ("binary", lambda x: quant.binary_codes(x, reduce_axes=-1), 1),
    ("mse4", lambda x: quant.mse_codes(x, 4), 4),
])
def test_export_round_trip_in_numpy(name, codes_fn, bits):
    """Packed codes plus fp32 scales rebuild the training-time weights bit for bit in NumPy."""
    fake = {"symmetric2": lambda x: quant.symmetric(x, 2, reduce_axes=-1),
            "symmetric4": lambda x: quant.symmetric(x, 4, reduce_axes=-1),
            "symmetric8": lambda x: quant.symmetric(x, 8),
            "ternary": lambda x: quant.ternary(x, reduce_axes=-1),
            "binary": lambda x: quant.binary(x, reduce_axes=-1),
            "mse4": lambda x: quant.mse(x, 4)}[name]
    x = jnp.array(np.random.default_rng(2).normal(size=(5, 7)).astype(np.float32))
    c = codes_fn(x)
    codes, scales = c.values, c.scales
    packed = packing.pack(np.asarray(codes), bits)
    rebuilt = packing.unpack(packed, bits, x.shape).astype(np.float32) * np.asarray(scales)
    assert_bitwise_equal(rebuilt, fake(x))


# ---- properties -------------------------------------------------------------------------

# Any finite float32: huge, tiny, subnormal, signed zeros. A fixed shape keeps compiles few.
FINITE = st.floats(width=32, allow_nan=False, allow_infinity=False)
MODEST = st.floats(-4.0, 4.0, width=32)


def arrays(elements=FINITE):
    return hnp.arrays(np.float32, SHAPE, elements=elements)


AXES = st.sampled_from([None, -1])


def n_distinct_per_group(q, axes):
    q = np.asarray(q, np.float32)
    groups = [q.reshape(-1)] if axes is None else list(q)
    return max(len(np.unique(g)) for g in groups)


@PROPS
@given(x=arrays(st.one_of(FINITE, MODEST)), bits=st.integers(2, 8), axes=AXES)
def test_symmetric_properties(x, bits, axes):
    q = quant.symmetric(x, bits, reduce_axes=axes)
    c = quant.symmetric_codes(x, bits, reduce_axes=axes)
    codes, scales = c.values, c.scales
    n = 2 ** (bits - 1) - 1
    assert np.isfinite(np.asarray(q)).all() and np.isfinite(np.asarray(scales)).all()
    assert n_distinct_per_group(q, axes) <= 2 ** bits - 1
    assert np.abs(np.asarray(codes, np.int32)).max() <= n
    # Within half a step of the clamped input.
    err = np.abs(np.asarray(q) - np.clip(x, -2.5, 2.5))
    assert (err <= np.asarray(scales) * (0.5 + 1e-5)).all()
    # Exact idempotence: the step is snapped to a fixed point of s -> fl(fl(n s) / n).
    assert_bitwise_equal(quant.symmetric(q, bits, reduce_axes=axes), q)
    assert_bitwise_equal(quant.dequantize(c), q)
    assert_bitwise_equal(np.asarray(codes).astype(np.float32) * np.asarray(scales), q)


@PROPS
@given(x=arrays(st.one_of(FINITE, MODEST)), axes=AXES)
def test_ternary_binary_properties(x, axes):
    for fn, codes_fn, levels in [(quant.ternary, quant.ternary_codes, 3),
                                 (quant.binary, quant.binary_codes, 2)]:
        q = fn(x, reduce_axes=axes)
        c = codes_fn(x, reduce_axes=axes)
        codes, scales = c.values, c.scales
        assert np.isfinite(np.asarray(q)).all() and np.isfinite(np.asarray(scales)).all()
        assert n_distinct_per_group(q, axes) <= levels
        allowed = {-1, 0, 1} if levels == 3 else {-1, 1}
        assert set(np.unique(np.asarray(codes)).tolist()) <= allowed
        assert_bitwise_equal(quant.dequantize(c), q)
        assert_bitwise_equal(np.asarray(codes).astype(np.float32) * np.asarray(scales), q)


@PROPS
@given(x=arrays(st.one_of(FINITE, MODEST)), bits=st.sampled_from([2, 3, 8]), axes=AXES)
def test_mse_properties(x, bits, axes):
    q = quant.mse(x, bits, reduce_axes=axes)
    c = quant.mse_codes(x, bits, reduce_axes=axes)
    codes, scales = c.values, c.scales
    assert np.isfinite(np.asarray(q)).all() and np.isfinite(np.asarray(scales)).all()
    assert n_distinct_per_group(q, axes) <= 2 ** bits - 1
    assert_bitwise_equal(quant.dequantize(c), q)
    assert_bitwise_equal(np.asarray(codes).astype(np.float32) * np.asarray(scales), q)
    # Alternating least squares starts from the symmetric scale and never increases the error.
    xc = np.clip(x, -2.5, 2.5).astype(np.float64)
    red = None if axes is None else -1
    err_mse = ((np.asarray(q, np.float64) - xc) ** 2).sum(axis=red)
    err_sym = ((np.asarray(quant.symmetric(x, bits, reduce_axes=axes), np.float64) - xc) ** 2
               ).sum(axis=red)
    # Slack for float32 sums: the LS scale of a constant group is exact only up to rounding.
    assert (err_mse <= err_sym * (1 + 1e-4) + 1e-10 * (xc ** 2).sum(axis=red)).all()


@PROPS
@given(x=hnp.arrays(np.float32, SHAPE, elements=MODEST), bits=st.integers(2, 8))
def test_bf16_matches_fp32_of_rounded_input(x, bits):
    xb = jnp.asarray(x, jnp.bfloat16)
    q = quant.symmetric(xb, bits)
    assert q.dtype == jnp.bfloat16
    want = quant.symmetric(xb.astype(jnp.float32), bits).astype(jnp.bfloat16)
    assert_bitwise_equal(q, want)
    assert_bitwise_equal(quant.dequantize(quant.symmetric_codes(xb, bits), dtype=jnp.bfloat16), q)


def test_matches_numpy_transcription_of_the_method():
    """Random data against a direct NumPy transcription of METHOD.md (reference divides by the
    scale; we multiply by a step snapped by <= 1 ulp, so q agrees to a couple of ulps)."""
    x = (np.random.default_rng(3).normal(size=(6, 40)) * 1.2).astype(np.float32)
    f32 = np.float32
    for red in (None, -1):
        axes = None if red is None else (-1,)
        xc = np.clip(x, f32(-2.5), f32(2.5))
        ax = np.abs(xc)
        for bits in range(2, 9):
            n = f32(2 ** (bits - 1) - 1)
            m = ax.max(axis=red, keepdims=True)
            s = n / m
            codes_ref = np.round(xc * s)
            c = quant.symmetric_codes(x, bits, reduce_axes=axes)
            codes, scales = c.values, c.scales
            np.testing.assert_array_equal(codes, codes_ref)
            np.testing.assert_array_max_ulp(np.asarray(scales), m / n, 1)
            np.testing.assert_allclose(quant.symmetric(x, bits, reduce_axes=axes),
                                       codes_ref / s, rtol=3e-7, atol=0)
        keep = ax > f32(0.7) * ax.mean(axis=red, keepdims=True)
        alpha = (ax * keep).sum(axis=red, keepdims=True) / keep.sum(axis=red, keepdims=True)
        c = quant.ternary_codes(x, reduce_axes=axes)
        codes, scales = c.values, c.scales
        np.testing.assert_array_equal(codes, np.sign(xc) * keep)
        np.testing.assert_allclose(scales, alpha, rtol=1e-6)
        c = quant.binary_codes(x, reduce_axes=axes)
        codes, scales = c.values, c.scales
        np.testing.assert_array_equal(codes, np.where(xc >= 0, 1, -1))
        np.testing.assert_allclose(scales, ax.mean(axis=red, keepdims=True), rtol=1e-6)
        x64 = xc.astype(np.float64)
        a = np.abs(x64).max(axis=red, keepdims=True) / 7
        for _ in range(5):
            b = np.clip(np.round(x64 / a), -7, 7)
            a = (x64 * b).sum(axis=red, keepdims=True) / (b * b).sum(axis=red, keepdims=True)
        c = quant.mse_codes(x, 4, reduce_axes=axes)
        codes, scales = c.values, c.scales
        np.testing.assert_array_equal(codes, np.clip(np.round(x64 / a), -7, 7))
        np.testing.assert_allclose(scales, a, rtol=1e-5)
