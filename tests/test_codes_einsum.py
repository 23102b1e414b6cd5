"""`quant.compute="codes"` per product (`codes_einsum`): forward and gradients equal fake mode's
for every operand kind (DQ-BART weights and activations, TBT weights with elastic activations, the
attention products, kernels quantized ahead), and elastic codes dequantize to `quant.elastic`
bit for bit.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax import quant
from dq_jax.model.codes_matmul import codes_einsum
from dq_jax.quant import policy
from dq_jax.quant.config import QuantConfig
from dq_jax.quant.policy import ActRole, Role
from tests.codes_helpers import _FAST_COMPILE, _rel

# ----------------------------------------------------------------------------- codes_einsum vs fake


def _check_einsum(subscripts, a, b, rule_a, rule_b, alpha_a=None, alpha_b=None):
    """codes_einsum vs einsum(fake(a), fake(b)): forward within 1e-6 and the gradients of
    sum(sin(y)) w.r.t. a, b and the step sizes within 1e-5 (relative, norm-wise)."""
    oa, ob = rule_a, rule_b
    argnums = (0, 1) + ((2,) if alpha_a is not None else ()) + ((3,) if alpha_b is not None else ())

    def fake(a, b, alpha_a, alpha_b):
        return jnp.einsum(subscripts, oa.fake(a, alpha_a), ob.fake(b, alpha_b))

    def codes(a, b, alpha_a, alpha_b):
        return codes_einsum(subscripts, a, b, oa, ob, alpha_a, alpha_b)

    def both(*args):
        out = {}
        for name, f in (("fake", fake), ("codes", codes)):
            _y, g = jax.value_and_grad(lambda *p, f=f: jnp.sum(jnp.sin(f(*p))), argnums)(*args)
            out[name] = (f(*args), g)
        return out

    out = jax.jit(both, compiler_options=_FAST_COMPILE)(a, b, alpha_a, alpha_b)
    (yf, gf), (yc, gc) = out["fake"], out["codes"]
    assert yc.shape == yf.shape and yc.dtype == yf.dtype
    assert _rel(yc, yf) <= 1e-6, _rel(yc, yf)
    for i, (c, f) in enumerate(zip(gc, gf)):
        assert np.linalg.norm(np.asarray(f)) > 0, f"gradient {i} is zero: not a meaningful test"
        assert c.shape == f.shape and c.dtype == f.dtype
        assert _rel(c, f) <= 1e-5, (i, _rel(c, f))


def _inputs(seed=0):
    """Activations `[4, 6, 48]` with different magnitudes per example (one beyond the clip, so
    per-example scales differ and the STE's clip mask matters) and a kernel `[48, 16]`."""
    rng = np.random.RandomState(seed)
    x = rng.randn(4, 6, 48) * np.array([0.2, 0.4, 1.5, 0.3])[:, None, None]
    return jnp.asarray(x, jnp.float32), jnp.asarray(0.3 * rng.randn(48, 16), jnp.float32)


DQ_WEIGHTS = {
    "ternary": QuantConfig(2, act_bits=8),
    "binary": QuantConfig(1, act_bits=8),
    "symmetric8": QuantConfig(8, act_bits=8),
    "mse4": QuantConfig(4, act_bits=8, method="mse"),
}


@pytest.mark.parametrize("act_scale", ["tensor", "example"])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("weights", list(DQ_WEIGHTS))
def test_dense_dq_bart(weights, granularity, act_scale):
    q = dataclasses.replace(DQ_WEIGHTS[weights], weight_granularity=granularity, act_scale=act_scale)
    x, w = _inputs()
    rule_w = policy.weight_rule(Role.LINEAR, q)
    assert rule_w.reduce_axes == (None if granularity == "tensor" else (0,))
    _check_einsum("...i,io->...o", x, w, policy.act_rule(ActRole.LINEAR_INPUT, q), rule_w)


@pytest.mark.parametrize("role", [ActRole.LINEAR_INPUT, ActRole.FFN_HIDDEN], ids=["signed", "unsigned"])
@pytest.mark.parametrize("act_bits", [1, 2])
@pytest.mark.parametrize("weight_bits", [1, 2], ids=["binary", "ternary"])
def test_dense_tbt_elastic(weight_bits, act_bits, role):
    """TBT weights x elastic activations; unsigned ones (fc2's input) carry their minimum as an
    offset, per tensor and per example."""
    x, w = _inputs(1)
    if role is ActRole.FFN_HIDDEN:
        x = jax.nn.gelu(3 * x)
    for act_scale in ("tensor", "example") if role is ActRole.FFN_HIDDEN else ("tensor",):
        q = QuantConfig(weight_bits, act_bits=act_bits, method="tbt", act_scale=act_scale)
        rule = policy.act_rule(role, q)
        assert rule.elastic and rule.signed == (role is ActRole.LINEAR_INPUT)
        alpha = rule.init_step_size(x)
        _check_einsum("...i,io->...o", x, w, rule, policy.weight_rule(Role.LINEAR, q), alpha)


def _attention_inputs(seed=0):
    """q, k `[B, H, T|S, Dh]`, probabilities `[B, H, T, S]` with padded keys, v `[B, H, S, Dh]`."""
    rng = np.random.RandomState(seed)
    b, h, t, s, d = 3, 2, 5, 7, 8
    scale = np.array([0.3, 0.6, 1.2])[:, None, None, None]
    q = jnp.asarray(rng.randn(b, h, t, d) * scale, jnp.float32)
    k = jnp.asarray(rng.randn(b, h, s, d) * scale, jnp.float32)
    v = jnp.asarray(rng.randn(b, h, s, d) * scale, jnp.float32)
    mask = np.arange(s)[None, :] < np.array([7, 5, 3])[:, None]
    scores = jnp.asarray(2 * rng.randn(b, h, t, s), jnp.float32)
    probs = jax.nn.softmax(jnp.where(mask[:, None, None, :], scores, -1e30), axis=-1)
    return q, k, probs, v


ATTENTION = {
    "dq_bart a8 tensor": QuantConfig(act_bits=8),
    "dq_bart a8 example": QuantConfig(act_bits=8, act_scale="example"),
    "dq_bart a4 example": QuantConfig(act_bits=4, act_scale="example"),
    "tbt a1 tensor": QuantConfig(act_bits=1, method="tbt"),
    "tbt a1 example": QuantConfig(act_bits=1, method="tbt", act_scale="example"),
    "tbt a2 tensor": QuantConfig(act_bits=2, method="tbt"),
    "tbt a2 example": QuantConfig(act_bits=2, method="tbt", act_scale="example"),
}


@pytest.mark.parametrize("name", list(ATTENTION))
def test_attention_products(name):
    q_cfg = ATTENTION[name]
    q, k, probs, v = _attention_inputs()
    rules = {r: policy.act_rule(r, q_cfg) for r in (ActRole.QUERY, ActRole.KEY, ActRole.PROBS, ActRole.VALUE)}
    alpha = lambda role, x: rules[role].init_step_size(x) if rules[role].elastic else None
    _check_einsum(
        "bhtd,bhsd->bhts",
        q,
        k,
        rules[ActRole.QUERY],
        rules[ActRole.KEY],
        alpha(ActRole.QUERY, q),
        alpha(ActRole.KEY, k),
    )
    _check_einsum(
        "bhts,bhsd->bthd",
        probs,
        v,
        rules[ActRole.PROBS],
        rules[ActRole.VALUE],
        alpha(ActRole.PROBS, probs),
        alpha(ActRole.VALUE, v),
    )


def test_codes_einsum_on_weights_quantized_ahead():
    """A kernel already held as `Codes` (a student quantized once) gives the same forward."""
    x, w = _inputs()
    q = QuantConfig(2, act_bits=8, act_scale="example")
    ra, rw = policy.act_rule(ActRole.LINEAR_INPUT, q), policy.weight_rule(Role.LINEAR, q)
    ahead = codes_einsum("...i,io->...o", x, rw.codes(w), ra, rw)
    np.testing.assert_array_equal(np.asarray(ahead), np.asarray(codes_einsum("...i,io->...o", x, w, ra, rw)))


def test_gradient_through_weights_quantized_ahead():
    """With the kernel held as `Codes` only the kernel should lose its gradient; the activation
    should keep the straight-through one, as fake mode gives it for the same `Codes` kernel."""
    x, w = _inputs()
    q = QuantConfig(2, act_bits=8)
    ra, rw = policy.act_rule(ActRole.LINEAR_INPUT, q), policy.weight_rule(Role.LINEAR, q)
    codes_w = rw.codes(w)
    got = jax.grad(lambda x: jnp.sum(jnp.sin(codes_einsum("...i,io->...o", x, codes_w, ra, rw))))(x)
    want = jax.grad(lambda x: jnp.sum(jnp.sin(jnp.einsum("...i,io->...o", ra.fake(x), codes_w.dequantize()))))(x)
    assert _rel(got, want) <= 1e-5, (float(jnp.abs(got).max()), float(jnp.abs(want).max()))


# ----------------------------------------------------------------------------- elastic codes


@pytest.mark.parametrize("reduce_axes", [None, (1, 2, 3)], ids=["per tensor", "per example"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("bits", [1, 2])
def test_elastic_codes_dequantize_to_elastic_bit_for_bit(bits, signed, reduce_axes):
    rng = np.random.RandomState(bits + 2 * signed)
    x = rng.randn(3, 2, 5, 7).astype(np.float32) * np.array([0.5, 1.0, 2.0], np.float32)[:, None, None, None]
    if not signed:
        x = np.abs(x) + np.array([0.0, -0.3, 0.7], np.float32)[:, None, None, None]
    alpha = np.float32(0.4)
    # elements on (or, unsigned, within rounding of) the rounding ties and the sign boundary
    base = np.float32(0.0) if signed else (x.min() if reduce_axes is None else x[0].min())
    x[0, 0, 0, :4] = base + alpha * np.float32([0.5, 1.5, 0.0, -0.5 if signed else 2.5])
    qn, qp = quant.elastic_levels(bits, signed)
    for a in (alpha, np.float32(1e-7), np.asarray([alpha])):  # also below the 1e-5 floor, and shape [1]
        want = np.asarray(quant.elastic(x, a, bits, signed, reduce_axes))
        codes = quant.elastic_codes(x, a, bits, signed, reduce_axes)
        np.testing.assert_array_equal(np.asarray(codes.dequantize()), want)
        jitted = jax.jit(lambda x, a: quant.elastic_codes(x, a, bits, signed, reduce_axes).dequantize())(x, a)
        np.testing.assert_array_equal(np.asarray(jitted), want)
        values = np.asarray(codes.values)
        assert values.dtype == np.int8 and values.min() >= qn and values.max() <= qp
        assert np.abs(values).max() <= codes.bound and codes.bits == bits
        assert codes.scales.shape == (1, 1, 1, 1)
        assert codes.scales.ravel()[0] == np.maximum(np.ravel(a)[0], np.float32(1e-5))
        if signed:
            assert codes.offset is None
        else:
            want_min = x.min(axis=reduce_axes or (0, 1, 2, 3), keepdims=True)
            np.testing.assert_array_equal(np.asarray(codes.offset), np.broadcast_to(want_min, codes.offset.shape))
            assert codes.offset.shape == ((3, 1, 1, 1) if reduce_axes else (1, 1, 1, 1))
