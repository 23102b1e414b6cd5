"""Quantizers: invariants (hypothesis) and agreement with a NumPy transcription of the method."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dq_jax import quant
from tests.quant_helpers import SHAPE, assert_bitwise_equal

PROPS = settings(max_examples=50, deadline=None)


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
    assert n_distinct_per_group(q, axes) <= 2**bits - 1
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
    for fn, codes_fn, levels in [(quant.ternary, quant.ternary_codes, 3), (quant.binary, quant.binary_codes, 2)]:
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
    assert n_distinct_per_group(q, axes) <= 2**bits - 1
    assert_bitwise_equal(quant.dequantize(c), q)
    assert_bitwise_equal(np.asarray(codes).astype(np.float32) * np.asarray(scales), q)
    # Alternating least squares starts from the symmetric scale and never increases the error.
    xc = np.clip(x, -2.5, 2.5).astype(np.float64)
    red = None if axes is None else -1
    err_mse = ((np.asarray(q, np.float64) - xc) ** 2).sum(axis=red)
    err_sym = ((np.asarray(quant.symmetric(x, bits, reduce_axes=axes), np.float64) - xc) ** 2).sum(axis=red)
    # Slack for float32 sums: the LS scale of a constant group is exact only up to rounding.
    assert (err_mse <= err_sym * (1 + 1e-4) + 1e-10 * (xc**2).sum(axis=red)).all()


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
            np.testing.assert_allclose(quant.symmetric(x, bits, reduce_axes=axes), codes_ref / s, rtol=3e-7, atol=0)
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
