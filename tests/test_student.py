"""The quantized student model: same params as the teacher, quantizes what METHOD.md says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax.model import hf, modeling
from dq_jax.quant.config import QuantConfig
from tests.hf_models import make_hf_model, padded_batch


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    make_hf_model("bart").save_pretrained(path)
    return hf.load_pretrained(str(path))


def _logits(cfg, params, quant, *batch):
    return np.asarray(jax.jit(modeling.Seq2SeqLM(cfg, quant).apply)({"params": params}, *batch).logits)


def test_param_tree_is_the_teachers(teacher):
    cfg, _params = teacher
    fp = modeling.abstract_params(cfg)
    q = modeling.abstract_params(cfg, QuantConfig(2, 2, 8))
    assert jax.tree.structure(fp) == jax.tree.structure(q)
    assert jax.tree.map(lambda a: a.shape, fp) == jax.tree.map(lambda a: a.shape, q)


def test_no_bits_is_bit_identical_to_full_precision(teacher):
    cfg, params = teacher
    batch = padded_batch(cfg.vocab_size)
    np.testing.assert_array_equal(_logits(cfg, params, QuantConfig(), *batch), _logits(cfg, params, None, *batch))


def test_eight_bit_student_is_close_and_two_bit_differs(teacher):
    """8-8-8 stays within 0.05 of the fp32 logits (about 1% of their spread); 2-2-8 moves them."""
    cfg, params = teacher
    batch = padded_batch(cfg.vocab_size)
    fp = _logits(cfg, params, None, *batch)
    spread = fp.std()
    d8 = np.abs(_logits(cfg, params, QuantConfig(8, 8, 8), *batch) - fp).max()
    d2 = np.abs(_logits(cfg, params, QuantConfig(2, 2, 8), *batch) - fp).max()
    assert 0 < d8 < 0.05, (d8, spread)
    assert d2 > 10 * d8, (d2, d8)


def test_exactly_the_linear_kernels_and_the_embedding_are_quantized(teacher):
    """The student equals the fp32 model fed with pre-quantized Linear kernels (per tensor) and
    a pre-quantized embedding table (per row): positional embeddings, LayerNorms, biases and
    final_logits_bias are untouched."""
    from dq_jax import quant

    cfg, params = teacher
    batch = padded_batch(cfg.vocab_size)

    def prequantize(path, x):
        names = [getattr(k, "key", None) for k in path]
        if names[-1] == "kernel":
            return quant.symmetric(x, 8, 2.5, None)
        if names[0] == "shared":
            return quant.symmetric(x, 4, 2.5, (-1,))
        return x

    manual = jax.tree_util.tree_map_with_path(prequantize, params)
    q = QuantConfig(weight_bits=8, embed_bits=4, method="symmetric", quantize_lm_head=True)
    np.testing.assert_allclose(_logits(cfg, params, q, *batch), _logits(cfg, manual, None, *batch), atol=1e-6, rtol=0)
    # by default the tied LM head keeps the fp32 table, as in the reference
    q_ref = QuantConfig(weight_bits=8, embed_bits=4, method="symmetric")
    assert np.abs(_logits(cfg, params, q_ref, *batch) - _logits(cfg, manual, None, *batch)).max() > 1e-4


@pytest.mark.parametrize("mode", ["example", "tensor"])
def test_activation_scale_mode_and_batch_composition(teacher, mode):
    cfg, params = teacher
    ids, am, dids, dam = padded_batch(cfg.vocab_size, batch=3)
    other = padded_batch(cfg.vocab_size, batch=3, seed=7)
    # example 0 with two different companions; the companions' inputs are scaled up via ids only
    b1 = tuple(np.concatenate([x[:1], y[1:]]) for x, y in zip((ids, am, dids, dam), other))
    q = QuantConfig(act_bits=8, act_scale=mode)
    l0 = _logits(cfg, params, q, ids, am, dids, dam)[0]
    l1 = _logits(cfg, params, q, *b1)[0]
    if mode == "example":
        np.testing.assert_allclose(l0, l1, atol=1e-6, rtol=0)
    else:  # one dynamic scale over the whole batch: the reference's dependence on companions
        assert np.abs(l0 - l1).max() > 1e-4


def test_unsupported_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"quant.weight_bits=3 is not supported by quant.method='binary'"):
        QuantConfig(weight_bits=3, method="binary")
    with pytest.raises(ValueError, match=r"quant.weight_bits=9 .* allowed bits"):
        QuantConfig(weight_bits=9)
    with pytest.raises(ValueError, match=r"quant.act_bits=1 has no activation quantizer"):
        QuantConfig(act_bits=1)
    with pytest.raises(ValueError, match=r"quant.method='int4'"):
        QuantConfig(method="int4")
    with pytest.raises(ValueError, match=r"act_scale"):
        QuantConfig(act_scale="row")


def test_bf16_student_runs(teacher):
    cfg, params = teacher
    batch = padded_batch(cfg.vocab_size)
    out = modeling.Seq2SeqLM(cfg, QuantConfig(2, 2, 8), dtype=jnp.bfloat16).apply({"params": params}, *batch)
    assert np.isfinite(np.asarray(out.logits)).all()
    fp = _logits(cfg, params, QuantConfig(2, 2, 8), *batch)
    assert np.abs(np.asarray(out.logits) - fp).max() < 0.25
