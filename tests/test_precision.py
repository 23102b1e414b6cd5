"""The precision policy: bf16 matmuls with fp32 accumulation, forward and backward, and the
config keys that choose the precision and the compute mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from dq_jax.model import modeling, precision
from dq_jax.model.config import ModelConfig
from dq_jax.quant.config import QuantConfig
from train.settings import spec_from_config


def _dots(fn, *args):
    """(operand dtypes, result dtype) of every dot_general in fn's jaxpr, nested ones included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append((tuple(v.aval.dtype.name for v in eqn.invars), eqn.outvars[0].aval.dtype.name))
            for param in eqn.params.values():  # pjit and custom_vjp bodies
                inner = getattr(param, "jaxpr", None)
                if inner is not None:
                    walk(inner if hasattr(inner, "eqns") else inner.jaxpr)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_bf16_einsum_accumulates_in_fp32_forward_and_backward():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(3, 5, 64)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(64, 7)), jnp.float32)
    y = precision.einsum("...i,io->...o", a, b, jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    ref = jnp.einsum(
        "...i,io->...o", a.astype(jnp.bfloat16).astype(jnp.float32), b.astype(jnp.bfloat16).astype(jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=1e-2, atol=1e-2)
    # a loss linear in y: the gradients differ from fp32's by the operands' bf16 rounding only
    c = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)
    loss = lambda a, b: jnp.sum(precision.einsum("...i,io->...o", a, b, jnp.bfloat16).astype(jnp.float32) * c)
    ga, gb = jax.grad(loss, (0, 1))(a, b)
    fa, fb = jax.grad(lambda a, b: jnp.sum(jnp.einsum("...i,io->...o", a, b) * c), (0, 1))(a, b)
    assert ga.dtype == jnp.float32 and gb.dtype == jnp.float32
    for g, f in ((ga, fa), (gb, fb)):
        assert float(jnp.linalg.norm(g - f) / jnp.linalg.norm(f)) < 1e-2
    # every dot, the two transposed ones of the backward included, multiplies bf16 operands
    # into an fp32 result (a bf16-result dot runs at fp32 speed on CPU)
    dots = _dots(jax.grad(loss, (0, 1)), a, b)
    assert len(dots) == 3 and all(d == (("bfloat16", "bfloat16"), "float32") for d in dots)


def test_fp32_einsum_is_the_plain_one():
    a, b = jnp.ones((2, 4)), jnp.full((4, 3), 0.5)
    np.testing.assert_array_equal(precision.einsum("...i,io->...o", a, b), jnp.einsum("...i,io->...o", a, b))
    assert precision.compute_dtype("fp32") == jnp.float32 and precision.compute_dtype("bf16") == jnp.bfloat16
    from configs import demo
    from train.settings import spec_from_config

    c = demo.get_config()
    c.precision = "fp16"  # the run's settings check the name
    with pytest.raises(ValueError, match=r"precision='fp16'; choose one of \['fp32', 'bf16'\]"):
        spec_from_config(c)


@pytest.mark.slow
def test_bf16_model_stays_close_to_fp32_and_trains():
    cfg = ModelConfig(
        vocab_size=96,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=40,
        dropout=0.0,
    )
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 96, (2, 9)))
    params = modeling.Seq2SeqLM(cfg).init(jax.random.key(0), ids, decoder_input_ids=ids)["params"]
    for quant in (None, QuantConfig(8, 8, 8, compute="codes")):
        f32 = modeling.Seq2SeqLM(cfg, quant).apply({"params": params}, ids, None, ids).logits
        bf16 = modeling.Seq2SeqLM(cfg, quant, dtype=jnp.bfloat16)
        out = bf16.apply({"params": params}, ids, None, ids).logits
        assert out.dtype == jnp.float32 and float(jnp.abs(out - f32).max()) < 0.05
        grads = jax.grad(lambda p, bf16=bf16: jnp.mean(bf16.apply({"params": p}, ids, None, ids).logits ** 2))(params)
        assert all(g.dtype == jnp.float32 and bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_config_keys_are_validated():
    c = demo.get_config()
    spec = spec_from_config(c)
    assert spec.precision == "fp32" and spec.quant.compute == "codes"
    c.unlock()
    c.precision = "bf16"
    c.quant.compute = "fake"  # away from the default, so the key is shown to be read
    spec = spec_from_config(c)
    assert spec.precision == "bf16" and spec.quant.compute == "fake"
    c.precision = "fp16"
    with pytest.raises(ValueError, match="precision='fp16'"):
        spec_from_config(c)
    c.precision = "fp32"
    c.quant.compute = "int4"
    with pytest.raises(ValueError, match=r"quant.compute='int4'; choose one of \('fake', 'codes'\)"):
        spec_from_config(c)
