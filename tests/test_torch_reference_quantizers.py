"""The quantizers of the PyTorch DQ-BART reference (`tests.torch_quantizers`) against
`dq_jax.quant`: bit-identical where the arithmetic is order-free (max-based symmetric scales,
sums of dyadic inputs), within a few ulp where a float32 sum is reduced in a different order,
STE gradients equal.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dq_jax import quant
from tests import torch_quantizers as tq


def bits_of(a):
    return np.asarray(a, np.float32).view(np.uint32)


def ulps(a, b):
    """Distance in float32 ulps (sign-magnitude bit patterns mapped onto a line)."""

    def line(v):
        i = np.asarray(v, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(line(a) - line(b))


def random_input(seed, shape=(12, 40), dyadic=False):
    """Normal values at several magnitudes, some beyond the clip, one all-zero row. With
    `dyadic`, multiples of 2**-10 below 2**4: float32 sums of those are exact in any order."""
    rng = np.random.RandomState(seed)
    x = rng.randn(*shape) * rng.choice([0.01, 0.3, 1.5], size=(shape[0],) + (1,) * (len(shape) - 1))
    rows = x.reshape(shape[0], -1)  # a view
    rows[1, :3] = [3.0, -2.5, 2.5]  # beyond and exactly at the clip
    rows[0] = 0.0
    if dyadic:
        x = np.round(x * 1024) / 1024
    return x.astype(np.float32)


def torch_q(name, x, per_row, **kw):
    return getattr(tq, name)(torch.tensor(x), per_row=per_row, **kw).numpy()


def jax_q(name, x, per_row, **kw):
    return np.asarray(getattr(quant, name)(jnp.asarray(x), reduce_axes=(-1,) if per_row else None, **kw))


QUANTIZERS = (
    [("symmetric", dict(bits=b)) for b in range(2, 9)]
    + [("ternary", {}), ("binary", {})]
    + [("mse", dict(bits=b)) for b in (2, 4, 8)]
)


@pytest.mark.parametrize("per_row", [False, True], ids=["tensor", "row"])
@pytest.mark.parametrize("name,kw", QUANTIZERS, ids=[f"{n}{k.get('bits', '')}" for n, k in QUANTIZERS])
def test_quantizers_match_jax(name, kw, per_row):
    for seed in range(3):
        x = random_input(seed)
        got, want = torch_q(name, x, per_row, **kw), jax_q(name, x, per_row, **kw)
        if per_row:
            np.testing.assert_array_equal(bits_of(got[0]), 0, err_msg="zero row must give +0.0")
        if name == "symmetric":
            # max|x| is exact and every later op is one IEEE float32 op in the same order.
            np.testing.assert_array_equal(bits_of(got), bits_of(want))
        else:
            # TWN/BWN/MSE scales are float32 sums that torch and XLA reduce in different
            # orders: a few ulp apart. The codes (hence signs and zeros) are the same.
            np.testing.assert_array_equal(np.sign(got), np.sign(want))
            assert ulps(got, want).max() <= 8
        # On dyadic inputs those sums are exact in any order, so every quantizer is bitwise.
        xd = random_input(seed, dyadic=True)
        np.testing.assert_array_equal(
            bits_of(torch_q(name, xd, per_row, **kw)), bits_of(jax_q(name, xd, per_row, **kw))
        )


def test_scalar_over_tensor_is_not_used():
    """torch evaluates `n / t` as `t.reciprocal() * n`: one ulp off for ~1 in 4 values, which
    flips symmetric codes that sit on a .5 boundary. Case found in a 768x768 weight: x * 15/m
    is exactly -2.5 in float32 (code -2), -2.5000002 with the reciprocal (code -3)."""
    m = torch.tensor([0.04860593], dtype=torch.float32)
    assert (15 / m).item() != torch.div(torch.full_like(m, 15), m).item()
    x = torch.tensor([-0.008100988, 0.04860593], dtype=torch.float32)
    np.testing.assert_array_equal(bits_of(tq.symmetric(x, 5).numpy()), bits_of(quant.symmetric(x.numpy(), 5)))


@pytest.mark.parametrize("per_example", [False, True])
def test_activation_matches_jax(per_example):
    x = random_input(3, shape=(4, 6, 10)) * 2
    x[2] *= 0.01  # per-example scales differ from the tensor scale
    got = tq.activation(torch.tensor(x), 8, per_example=per_example).numpy()
    want = np.asarray(quant.activation(jnp.asarray(x), 8, per_example=per_example))
    np.testing.assert_array_equal(bits_of(got), bits_of(want))


@pytest.mark.parametrize(
    "name,kw", [("symmetric", dict(bits=8)), ("symmetric", dict(bits=2)), ("ternary", {}), ("binary", {})]
)
@pytest.mark.parametrize("per_row", [False, True], ids=["tensor", "row"])
def test_ste_gradients_match_jax(name, kw, per_row):
    x = random_input(5)
    g = np.random.RandomState(6).randn(*x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    (getattr(tq, name)(xt, per_row=per_row, **kw) * torch.tensor(g)).sum().backward()
    fn = lambda v: jnp.sum(getattr(quant, name)(v, reduce_axes=(-1,) if per_row else None, **kw) * g)
    want = np.asarray(jax.grad(fn)(jnp.asarray(x)))
    np.testing.assert_array_equal(xt.grad.numpy(), want)
    inside = (x > -2.5) & (x < 2.5)
    np.testing.assert_array_equal(want, np.where(inside, g, 0))  # zero at and beyond +-clip
