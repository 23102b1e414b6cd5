"""Greedy and beam-search generation against HF PyTorch `generate` on tiny random BART/mBART."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.generation import logits_process as hf_lp

from dq_jax.inference.generate import decode_texts, generate, process_logits
from dq_jax.inference.generation_config import GenerationConfig
from dq_jax.model import hf, modeling
from dq_jax.model.config import ModelConfig
from dq_jax.quant.config import QuantConfig
from tests.hf_models import make_talker

MAX_LEN, MIN_LEN, NGRAM = 20, 5, 3
MBART_LANG = 5  # the "target language code" forced at position 1


@pytest.fixture(scope="module", params=["bart", "mbart"])
def saved(request, tmp_path_factory):
    """A tiny random model whose outputs depend on the source and end at varied lengths:
    layer weights and embeddings scaled up (random init is nearly source-independent),
    EOS's logit bias raised so that many sequences finish before max_length."""
    model = make_talker(request.param, 96, MAX_LEN + 4, layer_scale=8.0, eos_bias=4.0)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    cfg, params = hf.load_pretrained(str(path))
    return request.param, model, cfg, params


def sources(vocab, batch, src=12, seed=0, pad=1):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (batch, src))
    am = (np.arange(src)[None] < rng.randint(3, src + 1, (batch, 1))).astype(np.int64)
    ids[am == 0] = pad
    return ids, am


def gen_config(kind, **kw):
    return GenerationConfig(
        max_length=MAX_LEN,
        min_length=MIN_LEN,
        no_repeat_ngram_size=NGRAM,
        forced_bos_token_id=MBART_LANG if kind == "mbart" else None,
        forced_eos_token_id=2,
        **kw,
    )


def hf_generate(torch_model, ids, am, gen: GenerationConfig):
    kw = dict(
        num_beams=gen.num_beams,
        do_sample=False,
        max_length=gen.max_length,
        min_length=gen.min_length,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
        decoder_start_token_id=gen.decoder_start_token_id,
        forced_bos_token_id=gen.forced_bos_token_id,
        forced_eos_token_id=gen.forced_eos_token_id,
        pad_token_id=gen.pad_token_id,
        eos_token_id=gen.eos_token_id,
        return_dict_in_generate=True,
        output_scores=True,
    )
    if gen.num_beams > 1:
        kw.update(length_penalty=gen.length_penalty, early_stopping=gen.early_stopping)
    with torch.no_grad():
        out = torch_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am), **kw)
    seqs = out.sequences.numpy()
    seqs = np.pad(seqs, ((0, 0), (0, gen.max_length - seqs.shape[1])), constant_values=gen.pad_token_id)
    scores = out.sequences_scores.numpy() if gen.num_beams > 1 else None
    return seqs, scores


def expected_lengths(seqs, eos):
    after = seqs[:, 1:] == eos
    return np.where(after.any(1), after.argmax(1) + 2, seqs.shape[1])


def check_shapes(out, batch, gen):
    assert out.sequences.shape == (batch, gen.max_length) and out.sequences.dtype == jnp.int32
    assert out.scores.shape == (batch,) and out.scores.dtype == jnp.float32
    assert out.lengths.shape == (batch,)
    seqs = np.asarray(out.sequences)
    assert (seqs[:, 0] == gen.decoder_start_token_id).all()
    np.testing.assert_array_equal(out.lengths, expected_lengths(seqs, gen.eos_token_id))
    pad_after = np.arange(gen.max_length)[None] >= np.asarray(out.lengths)[:, None]
    assert (seqs[pad_after] == gen.pad_token_id).all()


def test_greedy_matches_hf(saved):
    kind, torch_model, cfg, params = saved
    gen = gen_config(kind)
    ids, am = sources(cfg.vocab_size, 8)
    model = modeling.Seq2SeqLM(cfg)
    out = generate(model, params, ids, am, gen)
    check_shapes(out, 8, gen)
    theirs, _ = hf_generate(torch_model, ids, am, gen)
    np.testing.assert_array_equal(out.sequences, theirs)
    seqs, lengths = np.asarray(out.sequences), np.asarray(out.lengths)
    assert len({tuple(s) for s in seqs}) > 4 and lengths.min() < MAX_LEN  # a meaningful test
    if kind == "mbart":
        assert (seqs[:, 1] == MBART_LANG).all()
    # greedy score: sum of log-probs of the chosen tokens, forced tokens counting 0
    with torch.no_grad():  # teacher-forced log-probs of the generated sequences
        logits = torch_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(am),
            decoder_input_ids=torch.tensor(seqs, dtype=torch.long),
        ).logits
    logp = torch.log_softmax(logits, dim=-1).numpy()
    want = np.zeros(len(seqs))
    for b, (s, n) in enumerate(zip(seqs, lengths)):
        for t in range(1, n):
            forced = (t == 1 and gen.forced_bos_token_id is not None) or t == MAX_LEN - 1
            want[b] += 0.0 if forced else logp[b, t - 1, s[t]]
    np.testing.assert_allclose(out.scores, want, atol=1e-4, rtol=0)


# (length_penalty, early_stopping); every variant is one more compilation, so they are spread
BEAM_VARIANTS = {"bart": [(2.0, True), (1.0, False)], "mbart": [(2.0, "never")]}


def test_beam_search_matches_hf(saved):
    kind, torch_model, cfg, params = saved
    ids, am = sources(cfg.vocab_size, 16, seed=1)
    model = modeling.Seq2SeqLM(cfg)
    for length_penalty, early_stopping in BEAM_VARIANTS[kind]:
        gen = gen_config(kind, num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping)
        out = generate(model, params, ids, am, gen)
        check_shapes(out, 16, gen)
        theirs, their_scores = hf_generate(torch_model, ids, am, gen)
        same = (np.asarray(out.sequences) == theirs).all(axis=1)
        assert same.mean() >= 0.95, (gen, np.where(~same))
        np.testing.assert_allclose(np.asarray(out.scores)[same], their_scores[same], atol=1e-4, rtol=0)
        assert len({tuple(s) for s in theirs}) > 8, gen
        if kind == "mbart":
            assert (np.asarray(out.sequences)[:, 1] == MBART_LANG).all()


def test_no_repeat_ngram_and_other_processors_match_hf():
    """Processors alone, on random buffers at every length, including n = 1 and 2 and ties."""
    rng = np.random.RandomState(0)
    vocab, length = 7, 12
    seq = rng.randint(0, 4, (6, length))  # few distinct tokens: many repeated n-grams
    scores = rng.randn(6, vocab).astype(np.float32)
    for n in (1, 2, 3):
        gen = GenerationConfig(
            max_length=length, min_length=4, no_repeat_ngram_size=n, forced_bos_token_id=5, forced_eos_token_id=2
        )
        procs = hf_lp.LogitsProcessorList(
            [
                hf_lp.NoRepeatNGramLogitsProcessor(n),
                hf_lp.MinLengthLogitsProcessor(4, 2),
                hf_lp.ForcedBOSTokenLogitsProcessor(5),
                hf_lp.ForcedEOSTokenLogitsProcessor(length, 2),
            ]
        )
        fn = jax.jit(lambda sc, sq, c, gen=gen: process_logits(sc, sq, c, gen))
        for cur in range(1, length):
            want = procs(torch.tensor(seq[:, :cur]), torch.tensor(scores)).numpy()
            got = fn(jnp.asarray(scores), jnp.asarray(seq, jnp.int32), jnp.int32(cur))
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"n={n} cur_len={cur}")


@pytest.mark.parametrize("saved", ["bart"], indirect=True)
def test_quantized_student_generates_deterministically(saved):
    kind, _, cfg, params = saved
    ids, am = sources(cfg.vocab_size, 4, seed=2)
    student = modeling.Seq2SeqLM(cfg, quant=QuantConfig(8, 8, 8))
    gen = gen_config(kind)  # greedy: a quantized beam search compiles ~2 s longer, same code path
    a, b = generate(student, params, ids, am, gen), generate(student, params, ids, am, gen)
    check_shapes(a, 4, gen)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert np.isfinite(np.asarray(a.scores)).all()


def test_generation_config_validation_and_round_trip():
    cfg = ModelConfig(
        vocab_size=99,
        model_type="mbart",
        forced_bos_token_id=7,
        forced_eos_token_id=2,
        hf_extra='{"num_beams": 4, "no_repeat_ngram_size": 3, "max_length": 30}',
    )
    gen = GenerationConfig.from_model_config(cfg, max_length=40, length_penalty=2.0)
    assert (gen.num_beams, gen.no_repeat_ngram_size, gen.max_length, gen.forced_bos_token_id) == (4, 3, 40, 7)
    d = gen.to_hf_dict()
    assert d["num_beams"] == 4 and d["forced_eos_token_id"] == 2 and d["early_stopping"] is True
    assert GenerationConfig(**d) == gen
    # the dict is a valid HF generation config
    hf_gen = transformers.GenerationConfig(**d)
    assert hf_gen.num_beams == 4 and hf_gen.length_penalty == 2.0
    small = ModelConfig(
        vocab_size=16, d_model=8, encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=8
    )
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(modeling.Seq2SeqLM(small), {}, np.ones((1, 3)), None, GenerationConfig(max_length=20))


def test_decode_texts(shared_data):
    tok = hf.load_tokenizer(str(shared_data / "tokenizers" / "bart-base_roberta-base"))
    body = tok("Hello world", add_special_tokens=False).input_ids
    seqs = np.array([[2, 0] + body + [2, 1, 1], [2] + body + [2, 1, 1, 1]])
    assert decode_texts(tok, seqs) == ["Hello world", "Hello world"]
