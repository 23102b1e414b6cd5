"""TBT quantizers (Liu et al., ACL 2023): statistics-based ternary/binary weights with a plain
STE, and the elastic 1-2 bit activation quantizer with LSQ gradients. Every expected value is
written out by hand from the formulas; all inputs are dyadic, so the float32 results are exact."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax import quant

EPS = np.float32(1e-5)

# --- TBT weights ----------------------------------------------------------------------------

# [out, in] = PyTorch nn.Linear layout, one scale per row.
# Row 0: mean|w| = 3 / 4 = .75; ternary alpha = 4/3 * .75 = 1, w / alpha = [.75, -1.5, .25, .5]
#   -> clip [.75, -1, .25, .5] -> round half-to-even [1, -1, 0, 0].
# Row 1: mean|w| = 6 / 4 = 1.5; ternary alpha = 2, w / alpha = [-.75, 1.5, .75, 0] -> [-1, 1, 1, 0].
# Row 2: all zero -> zero codes (ternary, scale 1) / +1 codes with scale 0 (binary).
W = np.array([[0.75, -1.5, 0.25, 0.5], [-1.5, 3.0, 1.5, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
TERNARY_CODES = [[1, -1, 0, 0], [-1, 1, 1, 0], [0, 0, 0, 0]]
TERNARY_SCALES = [[1.0], [2.0], [1.0]]
TERNARY_Q = [[1.0, -1.0, 0.0, 0.0], [-2.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
# Binary: alpha = mean|w| = [.75, 1.5, 0]; sign(0) := +1.
BINARY_CODES = [[1, -1, 1, 1], [-1, 1, 1, 1], [1, 1, 1, 1]]
BINARY_SCALES = [[0.75], [1.5], [0.0]]
BINARY_Q = [[0.75, -0.75, 0.75, 0.75], [-1.5, 1.5, 1.5, 1.5], [0.0, 0.0, 0.0, 0.0]]

TBT = {
    "ternary": (quant.tbt_ternary, quant.tbt_ternary_codes, TERNARY_CODES, TERNARY_SCALES, TERNARY_Q),
    "binary": (quant.tbt_binary, quant.tbt_binary_codes, BINARY_CODES, BINARY_SCALES, BINARY_Q),
}


@pytest.mark.parametrize("name", sorted(TBT))
def test_tbt_per_row_table(name):
    fake, codes_fn, codes, scales, q = TBT[name]
    c = codes_fn(W)
    got_codes, got_scales = c.values, c.scales
    assert got_codes.dtype == jnp.int8 and got_scales.dtype == jnp.float32
    assert got_scales.shape == (3, 1)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_scales, scales)
    out = fake(W)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, q)
    assert not np.signbit(np.asarray(out)[2]).any()  # the zero row is +0, not -0 or NaN
    np.testing.assert_array_equal(out, quant.dequantize(c))


@pytest.mark.parametrize("name", sorted(TBT))
def test_tbt_flax_layout_is_the_transpose(name):
    fake, codes_fn, codes, scales, q = TBT[name]
    c = codes_fn(W.T, reduce_axes=(0,))
    got_codes, got_scales = c.values, c.scales
    assert got_scales.shape == (1, 3)
    np.testing.assert_array_equal(got_codes, np.array(codes).T)
    np.testing.assert_array_equal(got_scales, np.array(scales).T)
    np.testing.assert_array_equal(fake(W.T, reduce_axes=(0,)), np.array(q).T)


def test_tbt_per_tensor_and_no_clipping():
    # Per tensor: sum|w| = 9 over 12 -> mean .75. Ternary alpha = 1: w = 3 is not clipped to
    # 2.5 first (unlike DQ-BART), it just saturates at code 1.
    c = quant.tbt_ternary_codes(W, reduce_axes=None)
    codes, scales = c.values, c.scales
    np.testing.assert_array_equal(scales, [[1.0]])
    np.testing.assert_array_equal(codes, TERNARY_CODES)  # row 1 / alpha: [-1.5, 3, 1.5, 0]
    np.testing.assert_array_equal(quant.tbt_ternary(W, reduce_axes=None), [[1, -1, 0, 0], [-1, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(quant.tbt_binary_codes(W, reduce_axes=None).scales, [[0.75]])
    # A row [10, -6, 2, 0]: mean|w| = 4.5 -> binary alpha 4.5 (no clip at 2.5 in the mean);
    # ternary alpha = 6, w / alpha = [1.67, -1, .33, 0] -> [1, -1, 0, 0].
    big = np.array([[10.0, -6.0, 2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(quant.tbt_binary(big), [[4.5, -4.5, 4.5, 4.5]])
    np.testing.assert_array_equal(quant.tbt_ternary(big), [[6.0, -6.0, 0.0, 0.0]])


@pytest.mark.parametrize("name", sorted(TBT))
def test_tbt_all_zero_is_exact_zero(name):
    fake, codes_fn = TBT[name][:2]
    z = jnp.zeros((2, 5))
    for axes in [(-1,), (0,), None]:
        out = fake(z, reduce_axes=axes)
        np.testing.assert_array_equal(out, np.zeros((2, 5)))
        assert np.isfinite(np.asarray(codes_fn(z, reduce_axes=axes).scales)).all()
    g = jax.grad(lambda w: jnp.sum(fake(w)))(z)
    np.testing.assert_array_equal(g, np.ones((2, 5)))


@pytest.mark.parametrize("name", sorted(TBT))
def test_tbt_gradient_is_identity_everywhere(name):
    fake = TBT[name][0]
    w = jnp.array([[1e4, -3e3, 0.5, 0.0], [2.5, -2.5, 7.0, -100.0]], jnp.float32)
    c = jnp.array([[1.0, -2.0, 3.0, 0.5], [4.0, -1.0, 0.25, 8.0]], jnp.float32)
    g = jax.grad(lambda w: jnp.sum(fake(w) * c))(w)
    np.testing.assert_array_equal(g, c)
    g = jax.jit(jax.grad(lambda w: jnp.sum(fake(w, reduce_axes=(0,)) * c)))(w)
    np.testing.assert_array_equal(g, c)


@pytest.mark.parametrize("name", sorted(TBT))
def test_tbt_bf16_and_jit(name):
    fake, _, _, _, q = TBT[name]
    out = fake(jnp.array(W, jnp.bfloat16))  # every value of W and q is exact in bf16
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out.astype(jnp.float32), q)
    g = jax.grad(lambda w: jnp.sum(fake(w).astype(jnp.float32)))(jnp.array(W, jnp.bfloat16))
    assert g.dtype == jnp.bfloat16
    np.testing.assert_array_equal(g.astype(jnp.float32), np.ones_like(W))
    np.testing.assert_array_equal(jax.jit(fake)(W), q)


# --- elastic activations --------------------------------------------------------------------

# Signed, alpha = .5, so v = 2x. 16 elements and Qp = 1 -> grad_scale = 1/sqrt(16) = .25.
X = np.array(
    [[0.125, -0.1875, 0.25, -0.25, 0.5, -0.5, 0.75, -0.75], [1.0, -2.0, 0.0, 0.375, 0.0625, 0.3125, -0.4375, 3.0]],
    np.float32,
)
# v = [[.25, -.375, .5, -.5, 1, -1, 1.5, -1.5], [2, -4, 0, .75, .125, .625, -.875, 6]]
# Inside [-1, 1] (ends included):
X_MASK = [[1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 0]]
C = np.array([[2, 1] * 4, [3] * 8], np.float32)  # loss = sum(q * C)
SIGNED = {
    # 2 bits: round half-to-even then clip to [-1, 1]: .5 -> 0, -.5 -> 0, 1.5 -> 2 -> 1.
    2: dict(
        q=[[0, 0, 0, 0, 0.5, -0.5, 0.5, -0.5], [0.5, -0.5, 0, 0.5, 0, 0.5, -0.5, 0.5]],
        # r = round(v) - v inside, -1 below, +1 above.
        r=[[-0.25, 0.375, -0.5, 0.5, 0, 0, 1, -1], [1, -1, 0, 0.25, -0.125, 0.375, -0.125, 1]],
        # sum(r) = .125 + 1.375 = 1.5; sum(C * r) = .375 + 4.125 = 4.5.
        dalpha_ones=1.5 * 0.25,
        dalpha_c=4.5 * 0.25,
    ),
    # 1 bit: sign(v) with sign(0) = +1.
    1: dict(
        q=[[0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5, -0.5], [0.5, -0.5, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5]],
        # q = a * sign(x) does not round v: r = sign(x) everywhere (dq/da), as the TBT code.
        r=[[1, -1, 1, -1, 1, -1, 1, -1], [1, -1, 1, 1, 1, 1, -1, 1]],
        # sum(r) = 0 + 4 = 4; sum(C * r) = 4 + 12 = 16.
        dalpha_ones=4 * 0.25,
        dalpha_c=16 * 0.25,
    ),
}


def grads(x, alpha, bits, signed, c=None, reduce_axes=None):
    c = jnp.ones(np.shape(x), jnp.float32) if c is None else c
    return jax.grad(lambda x, a: jnp.sum(quant.elastic(x, a, bits, signed, reduce_axes) * c), argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(alpha)
    )


@pytest.mark.parametrize("bits", [1, 2])
def test_elastic_signed_table(bits):
    t = SIGNED[bits]
    r = np.array(t["r"], np.float32)
    assert np.sum(r) * 0.25 == t["dalpha_ones"] and np.sum(C * r) * 0.25 == t["dalpha_c"]
    out = quant.elastic(X, jnp.float32(0.5), bits)
    assert out.dtype == jnp.float32 and out.shape == X.shape
    np.testing.assert_array_equal(out, t["q"])
    gx, ga = grads(X, np.float32(0.5), bits, True)
    np.testing.assert_array_equal(gx, X_MASK)
    assert ga.shape == () and ga.dtype == jnp.float32
    assert float(ga) == t["dalpha_ones"]
    gx, ga = grads(X, np.float32(0.5), bits, True, c=C)
    np.testing.assert_array_equal(gx, C * np.array(X_MASK))
    assert float(ga) == t["dalpha_c"]
    # reduce_axes means nothing when signed.
    np.testing.assert_array_equal(quant.elastic(X, 0.5, bits, True, reduce_axes=(1,)), t["q"])


def test_elastic_unsigned_2bit_table():
    # m = -1, alpha = 1: v = x + 1 = [0, .25, .5, .75, 1, 1.5, 2, 3] -> round [0, 0, 0, 1, 1, 2,
    # 2, 3] -> clip to [0, 2] -> q = codes - 1. 8 elements, Qp = 2 -> grad_scale = 1/4.
    x = np.array([[-1.0, -0.75, -0.5, -0.25], [0.0, 0.5, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(quant.elastic(x, jnp.float32(1.0), 2, False), [[-1, -1, -1, 0], [0, 1, 1, 1]])
    gx, ga = grads(x, np.float32(1.0), 2, False)
    np.testing.assert_array_equal(gx, [[1, 1, 1, 1], [1, 1, 1, 0]])
    # r = [0, -.25, -.5, .25, 0, .5, 0, 2 (above)] -> sum 2.
    assert float(ga) == 2.0 * 0.25


def test_elastic_unsigned_1bit_table():
    # m = -1, alpha = .5: v = 2 (x + 1), levels {0, 1}. 16 elements, Qp = 1 -> grad_scale 1/4.
    x = np.array(
        [
            [-1, -0.875, -0.75, -0.625, -0.5, -0.25, 0.5, -0.9375],
            [-0.8125, -0.6875, -0.5625, -0.5, 1.0, -0.75, -1.0, 0.0],
        ],
        np.float32,
    )
    # v = [[0, .25, .5, .75, 1, 1.5, 3, .125], [.375, .625, .875, 1, 4, .5, 0, 2]]
    np.testing.assert_array_equal(
        quant.elastic(x, jnp.float32(0.5), 1, False),
        [[-1, -1, -1, -0.5, -0.5, -0.5, -0.5, -1], [-1, -0.5, -0.5, -0.5, -0.5, -1, -1, -0.5]],
    )
    gx, ga = grads(x, np.float32(0.5), 1, False)
    np.testing.assert_array_equal(gx, [[1, 1, 1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 0, 1, 1, 0]])
    # r = [[0, -.25, -.5, .25, 0, 1, 1, -.125], [-.375, .375, .125, 0, 1, -.5, 0, 1]]: 1.375 +
    # 1.625 = 3.
    assert float(ga) == 3.0 * 0.25


def test_elastic_unsigned_per_example_min():
    # Example 0: m = 3, v = [0, .5, 1, 3] -> codes [0, 0, 1, 2] -> q = [3, 3, 4, 5].
    # Example 1: m = -2, v = [0, .75, 1.5, 0] -> codes [0, 1, 2, 0] -> q = [-2, -1, 0, -2].
    x = np.array([[[3.0, 3.5], [4.0, 6.0]], [[-2.0, -1.25], [-0.5, -2.0]]], np.float32)
    out = quant.elastic(x, jnp.float32(1.0), 2, False, reduce_axes=(1, 2))
    np.testing.assert_array_equal(out, [[[3, 3], [4, 5]], [[-2, -1], [0, -2]]])
    gx, ga = grads(x, np.float32(1.0), 2, False, reduce_axes=(1, 2))
    np.testing.assert_array_equal(gx, [[[1, 1], [1, 0]], [[1, 1], [1, 1]]])
    # r = [0, -.5, 0, 2] + [0, .25, .5, 0] = 2.25; numel 8, Qp 2 -> 1/4.
    assert float(ga) == 2.25 * 0.25
    # One min for the whole tensor (-2): example 0 has v = [5, 5.5, 6, 8], all at Qp -> 0.
    np.testing.assert_array_equal(quant.elastic(x, jnp.float32(1.0), 2, False), [[[0, 0], [0, 0]], [[-2, -1], [0, -2]]])


def test_elastic_init_values():
    x = np.array([[0.5, -1.5], [1.0, -1.0]], np.float32)
    # Signed: mean|x| = 1, Qp = 1 for both bit-widths -> 2.
    for bits in (1, 2):
        init = quant.elastic_init(x, bits)
        assert init.shape == () and init.dtype == jnp.float32 and float(init) == 2.0
    # Unsigned: 4 * mean|x| / sqrt(Qp) on the raw input (METHOD.md; the TBT code).
    assert float(quant.elastic_init(x, 1, signed=False)) == 4.0
    assert quant.elastic_init(x, 2, signed=False) == np.float32(4.0) / np.float32(math.sqrt(2))
    np.testing.assert_allclose(quant.elastic_init(x, 2, signed=False), 2.8284271, rtol=1e-7)
    # The min of the unsigned quantizer does not enter the init: mean|y| = 1.5 -> 6.
    y = np.array([[1.0, 3.0], [-2.0, 0.0]], np.float32)
    assert float(quant.elastic_init(y, 1, False)) == 6.0
    # The floor.
    for signed in (True, False):
        for bits in (1, 2):
            assert quant.elastic_init(jnp.zeros((3, 4)), bits, signed) == EPS
    assert quant.elastic_init(jnp.full((2, 2), 1e-9), 2) == EPS
    assert quant.elastic_init(jnp.array(x, jnp.bfloat16), 2).dtype == jnp.float32


@pytest.mark.parametrize("alpha", [0.0, -3.0, 1e-7])
def test_elastic_alpha_below_floor(alpha):
    # a = 1e-5: v = [2, -3, .4, 1e5] -> 2-bit codes [1, -1, 0, 1].
    x = jnp.array([2e-5, -3e-5, 0.4e-5, 1.0], jnp.float32)
    out = quant.elastic(x, jnp.float32(alpha), 2)
    np.testing.assert_array_equal(out, EPS * np.array([1, -1, 0, 1], np.float32))
    gx, ga = grads(x, np.float32(alpha), 2, True)
    np.testing.assert_array_equal(gx, [0, 0, 1, 0])
    # r = [1 (above), -1 (below), round(.4) - .4, 1 (above)], numel 4, Qp 1 -> sum(r) / 2. The
    # gradient still flows below the floor (TBT clamps inside its forward), so alpha can recover.
    np.testing.assert_allclose(float(ga), 0.6 / 2, rtol=1e-6)
    for signed in (True, False):
        for bits in (1, 2):
            out = quant.elastic(x, jnp.float32(alpha), bits, signed)
            gx, ga = grads(x, np.float32(alpha), bits, signed)
            assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(gx)).all()
            # Below the floor everything equals the computation at the floor.
            np.testing.assert_array_equal(out, quant.elastic(x, EPS, bits, signed))
            assert float(ga) == float(grads(x, EPS, bits, signed)[1])


def test_elastic_alpha_at_floor_still_learns():
    # alpha exactly 1e-5 (what elastic_init gives an all-zero batch) keeps its gradient.
    # x = [1e-5, 3e-5] -> v = [1, 3]: r = [0, 1] (above), numel 2, Qp 1 -> 1 / sqrt(2).
    x = jnp.array([1e-5, 3e-5], jnp.float32)
    _, ga = grads(x, EPS, 2, True)
    assert ga == np.float32(1.0) * np.float32(1 / math.sqrt(2))


def test_elastic_alpha_shape_and_dtype_follow_alpha():
    _gx, ga = grads(X, np.array([0.5], np.float32), 2, True)
    assert ga.shape == (1,) and ga.dtype == jnp.float32
    assert float(ga[0]) == SIGNED[2]["dalpha_ones"]
    _gx, ga = grads(X, jnp.array(0.5, jnp.bfloat16), 2, True)
    assert ga.dtype == jnp.bfloat16 and float(ga) == SIGNED[2]["dalpha_ones"]


def test_elastic_jit_and_bf16():
    f = jax.jit(lambda x, a: quant.elastic(x, a, 2, False))
    x = np.array([[-1.0, -0.75, -0.5, -0.25], [0.0, 0.5, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(f(x, jnp.float32(1.0)), [[-1, -1, -1, 0], [0, 1, 1, 1]])
    # alpha a constant of the caller's jit.
    np.testing.assert_array_equal(jax.jit(lambda x: quant.elastic(x, 0.5, 2))(X), SIGNED[2]["q"])
    g = jax.jit(jax.grad(lambda a, x: jnp.sum(quant.elastic(x, a, 1) * C)))(jnp.float32(0.5), X)
    assert float(g) == SIGNED[1]["dalpha_c"]
    # bf16 in -> bf16 out; every value of X and of the results is exact in bf16.
    for bits in (1, 2):
        out = quant.elastic(jnp.array(X, jnp.bfloat16), jnp.float32(0.5), bits)
        assert out.dtype == jnp.bfloat16
        np.testing.assert_array_equal(out.astype(jnp.float32), SIGNED[bits]["q"])
        gx, ga = grads(jnp.array(X, jnp.bfloat16), np.float32(0.5), bits, True)
        assert gx.dtype == jnp.bfloat16 and ga.dtype == jnp.float32
        np.testing.assert_array_equal(gx.astype(jnp.float32), X_MASK)
        assert float(ga) == SIGNED[bits]["dalpha_ones"]


def test_elastic_levels():
    assert quant.elastic_levels(1, True) == (-1, 1)
    assert quant.elastic_levels(2, True) == (-1, 1)
    assert quant.elastic_levels(1, False) == (0, 1)
    assert quant.elastic_levels(2, False) == (0, 2)


@pytest.mark.parametrize("bits", [0, 3, 8])
def test_elastic_bad_bits(bits):
    x = jnp.ones((2, 2))
    with pytest.raises(ValueError, match="supported bits are 1 and 2"):
        quant.elastic_levels(bits, True)
    with pytest.raises(ValueError, match="supported bits are 1 and 2"):
        quant.elastic(x, jnp.float32(1.0), bits, False)
    with pytest.raises(ValueError, match="supported bits are 1 and 2"):
        quant.elastic_init(x, bits)


def test_exported_names():
    for name in [
        "tbt_ternary",
        "tbt_binary",
        "tbt_ternary_codes",
        "tbt_binary_codes",
        "elastic",
        "elastic_init",
        "elastic_levels",
    ]:
        assert name in quant.__all__ and callable(getattr(quant, name))


def test_means_are_true_divisions():
    # 12 elements: sum 9 / 12 = .75 exactly, where 9 * fl(1 / 12) would round up an ulp.
    w = jnp.array([[0.75] * 12], jnp.float32)
    np.testing.assert_array_equal(quant.tbt_binary_codes(w).scales, [[0.75]])
    np.testing.assert_array_equal(quant.tbt_ternary_codes(w).scales, [[1.0]])
    assert float(quant.elastic_init(jnp.full((3, 4), 0.75), 2)) == 1.5
