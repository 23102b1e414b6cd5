"""`quant.compute="codes"` in generation: codes and fake mode give the same generated sequences,
a student quantized once (`quantized_student`) the same as the training-time one; its float
kernels held in bf16 and its resident bytes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax.inference.generate import generate
from dq_jax.inference.generation_config import GenerationConfig
from dq_jax.inference.quantized_model import quantized_student, resident_bytes
from dq_jax.model import hf, hf_layout, modeling
from dq_jax.quant.codes import Codes
from dq_jax.quant.config import ELASTIC, QuantConfig
from tests.hf_models import make_talker

# ----------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def talker(tmp_path_factory):
    """A tiny BART whose quantized students' greedy and beam outputs depend on the source and end
    at varied lengths (layer weights and embeddings scaled up, EOS's logit bias raised, as in
    test_generate, less so: 2.5-clipped 8-bit activations of x8 layers lose the source)."""
    model = make_talker("bart", 96, 24, layer_scale=4.0, eos_bias=2.0)
    path = tmp_path_factory.mktemp("talker")
    model.save_pretrained(path)
    cfg, params = hf.load_pretrained(str(path))
    rng = np.random.RandomState(0)
    ids = rng.randint(3, cfg.vocab_size, (8, 12))
    am = (np.arange(12)[None] < rng.randint(3, 13, (8, 1))).astype(np.int32)
    ids[am == 0] = cfg.pad_token_id
    return cfg, params, ids, am


GENERATION = {
    # greedy; the quantized student keeps the reference's fp32 LM head as an untied copy
    "8-8-8 greedy": (QuantConfig(8, 8, 8), 1),
    # beam; elastic activations and the tied LM head quantized: its table stays Codes
    "tbt W2A2 tied head, beam": (QuantConfig(2, 2, 2, method="tbt", quantize_lm_head=True), 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GENERATION))
def test_generation_codes_vs_fake_and_quantized_student(talker, name):
    cfg, params, ids, am = talker
    q, beams = GENERATION[name]
    params = modeling.init_elastic(
        modeling.Seq2SeqLM(cfg, q),
        params,
        jnp.asarray(ids),
        jnp.asarray(am),
        jnp.full((ids.shape[0], 4), cfg.decoder_start_token_id, jnp.int32),
    )
    gen = GenerationConfig.from_model_config(cfg, num_beams=beams, max_length=16, min_length=4, no_repeat_ngram_size=2)
    outs = {}
    for compute in ("fake", "codes"):
        qc = dataclasses.replace(q, compute=compute)
        outs[compute, "training student"] = generate(modeling.Seq2SeqLM(cfg, qc), params, ids, am, gen)
        model, qparams = quantized_student(cfg, qc, params)
        assert isinstance(qparams["decoder"]["layers_1"]["encoder_attn"]["v_proj"]["kernel"], Codes)
        if q.quantize_lm_head:
            assert isinstance(qparams["shared"]["embedding"], Codes) and "lm_head" not in qparams
        else:
            assert isinstance(qparams["shared"]["embedding"], Codes)
            np.testing.assert_array_equal(qparams["lm_head"]["kernel"], np.asarray(params["shared"]["embedding"]).T)
        outs[compute, "quantized student"] = generate(model, qparams, ids, am, gen)
    ref = outs["fake", "training student"]
    seqs, lengths = np.asarray(ref.sequences), np.asarray(ref.lengths)
    assert len({tuple(s) for s in seqs}) >= 6 and lengths.min() < gen.max_length  # a meaningful test
    for key, out in outs.items():
        np.testing.assert_array_equal(np.asarray(out.sequences), seqs, err_msg=str(key))
        np.testing.assert_array_equal(np.asarray(out.lengths), lengths, err_msg=str(key))
        np.testing.assert_allclose(
            np.asarray(out.scores), np.asarray(ref.scores), rtol=1e-5, atol=1e-5, err_msg=str(key)
        )


@pytest.mark.parametrize(
    "q",
    [QuantConfig(2, 2, 8, compute="codes"), QuantConfig(None, None, None)],
    ids=["2-2-8 fp32 head", "full precision"],
)
def test_bf16_student_holds_its_float_kernels_in_bf16_with_the_same_logits(talker, q):
    """Quantized once for bf16 generation, the float kernels (the untied LM head; every Linear of
    a full-precision student) are stored in bf16: the logits equal the bf16 model's on the fp32
    master weights bit for bit (it casts them at every product), and they take half the bytes."""
    cfg, params, ids, am = talker
    dec = jnp.full((ids.shape[0], 5), cfg.decoder_start_token_id, jnp.int32)
    model, qparams = quantized_student(cfg, q, params, jnp.bfloat16)
    head = qparams["lm_head"]["kernel"] if "lm_head" in qparams else None
    kernels = [x for p, x in hf_layout.flatten(qparams) if p[-1] == "kernel" and not isinstance(x, Codes)]
    assert kernels and all(x.dtype == jnp.bfloat16 for x in kernels)
    emb = qparams["shared"]["embedding"]
    assert (head is not None) == bool(q.embed_bits) and (isinstance(emb, Codes) or emb.dtype == jnp.float32)
    want = modeling.Seq2SeqLM(cfg, q, dtype=jnp.bfloat16).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(am), dec
    )
    got = model.apply({"params": qparams}, jnp.asarray(ids), jnp.asarray(am), dec)
    np.testing.assert_array_equal(np.asarray(got.logits), np.asarray(want.logits))
    _, fp32_held = quantized_student(cfg, q, params)
    saved = sum(x.size * 2 for x in kernels)
    assert resident_bytes(qparams) == resident_bytes(fp32_held) - saved


def _expected_resident_bytes(params: dict, q: QuantConfig) -> int:
    """Bytes of a student quantized once, counted from the fp32 tree and the config alone:
    every quantized tensor as one int8 code per element plus one fp32 scale per tensor (per
    output column of a Linear kernel when per row, per vocabulary row of the embedding), an fp32
    copy of the table as LM head when only the lookups are quantized, everything else fp32."""
    total = 0
    for path, leaf in hf_layout.flatten(params):
        size = int(np.size(leaf))
        linear = path[-1] == "kernel" and path[0] in ("encoder", "decoder") and "layers" in path[1]
        if linear and q.weight_bits:
            per_row = q.weight_granularity == "row" or q.method == "tbt"
            total += size + 4 * (leaf.shape[1] if per_row else 1)
        elif path == ("shared", "embedding") and q.embed_bits:
            total += size + 4 * leaf.shape[0] + (0 if q.quantize_lm_head else 4 * size)
        else:
            total += 4 * size
    return total


@pytest.mark.parametrize(
    "q",
    [
        QuantConfig(8, 8, 8),
        QuantConfig(2, 2, 8, weight_granularity="row"),
        QuantConfig(2, 2, 2, method="tbt", quantize_lm_head=True),
        QuantConfig(2, None, 8),
    ],
    ids=["8-8-8", "2-2-8 row", "tbt tied head", "embedding fp32"],
)
def test_resident_bytes(talker, q):
    cfg, params, _, _ = talker
    if q.elastic:  # step sizes ride along in the trainable tree (their values do not matter here)
        params = dict(
            params, **{ELASTIC: jax.tree.map(lambda s: np.float32(0.5), modeling.abstract_trainable(cfg, q)[ELASTIC])}
        )
    _, qparams = quantized_student(cfg, q, params)
    fp32 = sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))
    got = resident_bytes(qparams)
    assert got == _expected_resident_bytes(params, q), (got, _expected_resident_bytes(params, q))
    assert got < fp32
