"""Greedy and beam-search generation for `Seq2SeqLM`, a jit-compiled port of HF's `generate`.

One `jax.jit` function per (model, `GenerationConfig`, input shapes): encode once, allocate the
KV cache at `max_length`, then a `jax.lax.while_loop` over decoder positions with no host round
trips. Beam search follows transformers 5.x's vectorized `_beam_search` step by step (top
`2 * num_beams` continuations, running vs finished beams, its length penalty and early-stopping
heuristics, the -1e9 offsets), so sequences and `sequences_scores` match HF PyTorch up to float
noise. Logits processors are the ones HF builds for BART/mBART, in HF's order:
no-repeat-ngram, min-length, forced BOS (step 1), forced EOS (step `max_length - 1`).

Lengths count the whole decoder sequence, the start token included, as HF's `max_length` does.
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dq_jax.inference.generation_config import GenerationConfig
from dq_jax.model.kv_cache import DecoderCache
from dq_jax.model.modeling import Seq2SeqLM, variables
from dq_jax.quant.codes import Codes

_NEG = -1.0e9  # HF's "very large negative" offset (not -inf: it must stay comparable)


@flax.struct.dataclass
class GenerateOutput:
    sequences: jax.Array  # [B, max_length] int32: start token, tokens, EOS, then pad
    scores: jax.Array  # [B] float32: beam: HF's sequences_scores; greedy: sum of processed log-probs
    lengths: jax.Array  # [B] int32: tokens up to and including EOS, the start token included


# ----------------------------------------------------------------------------- logits processors


def _ban_repeated_ngrams(scores, seq, cur_len, n):
    """HF's NoRepeatNGramLogitsProcessor on a fixed buffer. scores `[N, V]`; seq `[N, L]` holds
    `cur_len` valid tokens. Bans every token that would complete an n-gram already in seq."""
    num, length = seq.shape
    vocab = scores.shape[-1]
    starts = jnp.arange(length - n + 1)  # window starts [W]
    windows = seq[:, starts[:, None] + jnp.arange(n)[None]]  # [N, W, n]
    valid = starts <= cur_len - n  # complete windows only
    if n > 1:
        prefix = jax.lax.dynamic_slice_in_dim(seq, jnp.maximum(cur_len - (n - 1), 0), n - 1, axis=1)  # [N, n-1]
        matches = jnp.all(windows[..., :-1] == prefix[:, None, :], axis=-1) & valid[None]
    else:
        matches = jnp.broadcast_to(valid[None], windows.shape[:2])
    banned_ids = jnp.where(matches, windows[..., -1], vocab)  # [N, W]; vocab = "nothing", dropped
    banned = jnp.zeros((num, vocab), bool).at[jnp.arange(num)[:, None], banned_ids].set(True, mode="drop")
    return jnp.where(banned, -jnp.inf, scores)


def _force(scores, token_id):
    """Forced token: score 0, everything else -inf (as HF's ForcedBOS/EOS processors)."""
    return jnp.where(jnp.arange(scores.shape[-1]) == token_id, 0.0, -jnp.inf).astype(scores.dtype)[None]


def process_logits(scores, seq, cur_len, gen: GenerationConfig):
    """The processors HF's `_get_logits_processor` builds for BART/mBART, in its order.
    scores `[N, V]`; seq `[N, L]` buffer with `cur_len` tokens so far (start token included)."""
    vocab = scores.shape[-1]
    if gen.no_repeat_ngram_size > 0:
        scores = _ban_repeated_ngrams(scores, seq, cur_len, gen.no_repeat_ngram_size)
    if gen.min_length > 0:
        eos = (jnp.arange(vocab) == gen.eos_token_id)[None]
        scores = jnp.where(eos & (cur_len < gen.min_length), -jnp.inf, scores)
    if gen.forced_bos_token_id is not None:
        scores = jnp.where(cur_len == 1, _force(scores, gen.forced_bos_token_id), scores)
    if gen.forced_eos_token_id is not None:
        scores = jnp.where(cur_len == gen.max_length - 1, _force(scores, gen.forced_eos_token_id), scores)
    return scores


# ----------------------------------------------------------------------------- the loops


def _repeat_rows(x, rep):
    """`rep` on an array; on `Codes`, on its values and on its scales when they vary by row (a
    scale per example; a scale over the whole tensor is the same for the repeated tensor)."""
    if not isinstance(x, Codes):
        return rep(x)
    by_row = 0 not in x.axes
    return dataclasses.replace(
        x,
        values=rep(x.values),
        scales=rep(x.scales) if by_row else x.scales,
        offset=rep(x.offset) if by_row and x.offset is not None else x.offset,
    )


def _prepare(model, params, input_ids, attention_mask, gen, expand):
    """Encode once; cache and encoder states repeated `expand` times per example (beam-major).

    Returns `step(tokens, cache) -> (logits, cache)` and the loop-carried part of the cache: its
    index and self-attention buffers, `cross_attn=()`. The cross-attention keys/values never
    change, so they stay outside the loop carry and `step` closes over them.
    """
    v = variables(params)
    enc = model.apply(v, input_ids, attention_mask, method=model.encode).last_hidden_state
    cache = model.apply(v, enc, gen.max_length, method=model.init_cache)
    if expand > 1:  # [B, ...] -> [B * K, ...], example b's beams at rows b*K .. b*K+K-1
        rep = lambda x: jnp.repeat(x, expand, axis=0) if x.ndim else x
        enc, attention_mask = rep(enc), rep(attention_mask)
        cache = jax.tree.map(lambda x: _repeat_rows(x, rep), cache, is_leaf=lambda x: isinstance(x, Codes))
    cross = cache.cross_attn

    def step(tokens, carried: DecoderCache):  # tokens [N] -> logits [N, V] fp32, new carried cache
        out = model.apply(
            v, tokens[:, None], enc, attention_mask, cache=carried.replace(cross_attn=cross), method=model.decode
        )
        return out.logits[:, 0].astype(jnp.float32), out.cache.replace(cross_attn=())

    return step, cache.replace(cross_attn=())


@flax.struct.dataclass
class _GreedyState:
    seq: jax.Array  # [B, L] int32: start token, then the tokens so far, pad after them
    cur: jax.Array  # int32 scalar: tokens in seq, the start token included
    unfinished: jax.Array  # [B] bool
    score: jax.Array  # [B] float32: sum of the chosen tokens' processed log-probs
    lengths: jax.Array  # [B] int32: as GenerateOutput.lengths
    cache: DecoderCache  # the loop-carried part (see `_prepare`)


def _greedy(model, params, input_ids, attention_mask, gen):
    b, length = input_ids.shape[0], gen.max_length
    step, cache = _prepare(model, params, input_ids, attention_mask, gen, 1)
    seq = jnp.full((b, length), gen.pad_token_id, jnp.int32).at[:, 0].set(gen.decoder_start_token_id)
    init = _GreedyState(
        seq=seq,
        cur=jnp.array(1, jnp.int32),
        unfinished=jnp.ones((b,), bool),
        score=jnp.zeros((b,), jnp.float32),
        lengths=jnp.ones((b,), jnp.int32),
        cache=cache,
    )

    def cond(s: _GreedyState):
        return jnp.any(s.unfinished) & (s.cur < length)

    def body(s: _GreedyState):
        cur, unfinished = s.cur, s.unfinished
        logits, cache = step(jax.lax.dynamic_index_in_dim(s.seq, cur - 1, 1, keepdims=False), s.cache)
        nxt = jnp.argmax(process_logits(logits, s.seq, cur, gen), axis=-1).astype(jnp.int32)
        logp = process_logits(jax.nn.log_softmax(logits, axis=-1), s.seq, cur, gen)
        tok_logp = jnp.take_along_axis(logp, nxt[:, None], axis=-1)[:, 0]
        nxt = jnp.where(unfinished, nxt, gen.pad_token_id)  # finished rows emit pad, as HF
        return _GreedyState(
            seq=s.seq.at[:, cur].set(nxt),
            cur=cur + 1,
            unfinished=unfinished & (nxt != gen.eos_token_id) & (cur + 1 < length),
            score=s.score + jnp.where(unfinished, tok_logp, 0.0),
            lengths=jnp.where(unfinished, cur + 1, s.lengths),
            cache=cache,
        )

    s = jax.lax.while_loop(cond, body, init)
    return GenerateOutput(s.seq, s.score, s.lengths)


def _penalty_table(gen):
    """`float32(n ** length_penalty)` for n = 0..max_length, computed in double as Python does in
    HF (an int ** float divisor), so the division rounds the same way as in PyTorch."""
    return jnp.asarray([1.0] + [float(n) ** gen.length_penalty for n in range(1, gen.max_length + 1)], jnp.float32)


def _take(x, idx):
    """x `[B, M, ...]`, idx `[B, K]` -> `[B, K, ...]` (HF's `_gather_beams`)."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@flax.struct.dataclass
class _BeamState:
    """HF `_beam_search`'s loop state, K = num_beams, L = max_length."""

    running_seq: jax.Array  # [B, K, L] int32: the beams still extended
    running_scores: jax.Array  # [B, K] float32: their summed log-probs
    seq: jax.Array  # [B, K, L] int32: the finished hypotheses, best first
    beam_scores: jax.Array  # [B, K] float32: their length-penalized scores, -1e9 for empty slots
    fin_len: jax.Array  # [B, K] int32: their lengths
    is_fin: jax.Array  # [B, K] bool: slot holds a finished hypothesis
    heur: jax.Array  # [B, 1] bool: the early-stopping heuristic still lets the example improve
    cur: jax.Array  # int32 scalar: tokens per beam, the start token included
    done: jax.Array  # bool scalar
    cache: DecoderCache  # the loop-carried part (see `_prepare`), rows ordered as running_seq


def _beam_search(model, params, input_ids, attention_mask, gen):
    b, k, length = input_ids.shape[0], gen.num_beams, gen.max_length
    k2 = 2 * k  # beams_to_keep with one EOS token
    prompt = 1  # decoder_prompt_len: the start token
    step, cache = _prepare(model, params, input_ids, attention_mask, gen, k)
    pen = _penalty_table(gen)
    top_mask = jnp.arange(k2) < k  # only the best num_beams candidates may finish
    early = gen.early_stopping
    seq = jnp.full((b, k, length), gen.pad_token_id, jnp.int32).at[:, :, 0].set(gen.decoder_start_token_id)
    init = _BeamState(
        running_seq=seq,
        running_scores=jnp.zeros((b, k), jnp.float32).at[:, 1:].set(_NEG),
        seq=seq,
        beam_scores=jnp.full((b, k), _NEG, jnp.float32),
        fin_len=jnp.ones((b, k), jnp.int32),
        is_fin=jnp.zeros((b, k), bool),
        heur=jnp.ones((b, 1), bool),
        cur=jnp.array(prompt, jnp.int32),
        done=jnp.array(False),
        cache=cache,
    )

    def body(s: _BeamState):
        cur, running_seq = s.cur, s.running_seq
        flat_seq = running_seq.reshape(b * k, length)  # [B * K, L]
        logits, cache = step(jax.lax.dynamic_index_in_dim(flat_seq, cur - 1, 1, keepdims=False), s.cache)
        vocab = logits.shape[-1]
        logp = process_logits(jax.nn.log_softmax(logits, axis=-1), flat_seq, cur, gen)
        # [B * K, V] -> [B, K, V], plus each beam's score -> [B, K * V]
        logp = (logp.reshape(b, k, vocab) + s.running_scores[:, :, None]).reshape(b, k * vocab)

        # c. top-2K continuations over all beams (_get_top_k_continuations)
        topk_logp, topk_idx = jax.lax.top_k(logp, k2)  # [B, 2K]
        src, tok = topk_idx // vocab, (topk_idx % vocab).astype(jnp.int32)
        topk_seq = _take(running_seq, src).at[:, :, cur].set(tok)  # [B, 2K, L]
        # d. stopping criteria: EOS, or the sequence now has max_length tokens
        hits = (tok == gen.eos_token_id) | (cur + 1 >= length)

        # e. the best K unfinished continuations keep running (_get_running_beams_for_next_iteration)
        topk_running = topk_logp + hits.astype(jnp.float32) * _NEG
        nxt = jax.lax.top_k(topk_running, k)[1]
        running_seq, running_scores, beam_src = _take(topk_seq, nxt), _take(topk_running, nxt), _take(src, nxt)

        # f. finished candidates, length-penalized, merged with the finished beams (_update_finished_beams)
        just = hits & top_mask[None]
        cand = topk_logp / pen[cur + 1 - prompt]
        if early is True:
            cand = cand + (jnp.all(s.is_fin, axis=-1, keepdims=True)).astype(jnp.float32) * _NEG
        cand = cand + (~s.heur).astype(jnp.float32) * _NEG
        cand = cand + (~just).astype(jnp.float32) * _NEG
        merged_scores = jnp.concatenate([s.beam_scores, cand], axis=1)  # [B, 3K]
        keep = jax.lax.top_k(merged_scores, k)[1]
        new_seq = _take(jnp.concatenate([s.seq, topk_seq], axis=1), keep)
        beam_scores = _take(merged_scores, keep)
        fin_len = _take(jnp.concatenate([s.fin_len, jnp.broadcast_to(cur + 1, (b, k2))], axis=1), keep)
        is_fin = _take(jnp.concatenate([s.is_fin, just], axis=1), keep)

        # g. reorder the self-attention cache by source beam (the cross-attention keys/values are
        # identical across an example's beams and are not carried). `take` with in-range indices is
        # ~3x faster on CPU than `x[idx]`, which adds negative-index handling.
        flat_src = (jnp.arange(b)[:, None] * k + beam_src).reshape(b * k)  # [B, K] -> [B * K]
        reorder = lambda x: jnp.take(x, flat_src, axis=0, mode="clip")
        cache = cache.replace(self_attn=jax.tree.map(reorder, cache.self_attn))

        cur = cur + 1
        # _check_early_stop_heuristic
        hyp = (length - prompt) if (early == "never" and gen.length_penalty > 0.0) else (cur - prompt)
        best_running = running_scores[:, :1] / pen[hyp]
        worst_fin = jnp.where(is_fin, jnp.min(beam_scores, axis=1, keepdims=True), _NEG)
        heur = s.heur & jnp.any(best_running > worst_fin, axis=-1, keepdims=True)
        # _beam_search_has_unfinished_sequences
        open_beam = ~(jnp.all(is_fin) & (early is True))
        unfinished = jnp.any(heur) & open_beam & ~jnp.all(hits)
        return _BeamState(
            running_seq=running_seq,
            running_scores=running_scores,
            seq=new_seq,
            beam_scores=beam_scores,
            fin_len=fin_len,
            is_fin=is_fin,
            heur=heur,
            cur=cur,
            done=~unfinished,
            cache=cache,
        )

    s = jax.lax.while_loop(lambda s: ~s.done, body, init)
    return GenerateOutput(s.seq[:, 0], s.beam_scores[:, 0], s.fin_len[:, 0])


@functools.partial(jax.jit, static_argnums=(0, 4))
def _generate(model, params, input_ids, attention_mask, gen):
    if gen.num_beams == 1:
        return _greedy(model, params, input_ids, attention_mask, gen)
    return _beam_search(model, params, input_ids, attention_mask, gen)


def generate(
    model: Seq2SeqLM, params, input_ids, attention_mask=None, gen: GenerationConfig | None = None
) -> GenerateOutput:
    """input_ids/attention_mask `[B, S]` -> GenerateOutput (sequences `[B, max_length]`).

    Greedy (`num_beams == 1`, HF's `_sample` without sampling) or beam search (HF's
    `_beam_search`). Compiled once per (model, gen, shapes); works for quantized students
    (`Seq2SeqLM(cfg, quant)`) as well.
    """
    cfg = model.cfg
    gen = gen if gen is not None else GenerationConfig.from_model_config(cfg)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, source_length], got shape {input_ids.shape}.")
    attention_mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}.")
    if gen.max_length - 1 > cfg.max_position_embeddings:
        raise ValueError(
            f"max_length={gen.max_length} needs {gen.max_length - 1} decoder positions; the model "
            f"has max_position_embeddings={cfg.max_position_embeddings}."
        )
    if 2 * gen.num_beams > cfg.vocab_size:
        raise ValueError(
            f"num_beams={gen.num_beams}: beam search keeps 2*num_beams candidates out of vocab_size={cfg.vocab_size}."
        )
    for name in (
        "decoder_start_token_id",
        "pad_token_id",
        "eos_token_id",
        "forced_bos_token_id",
        "forced_eos_token_id",
    ):
        v = getattr(gen, name)
        if v is not None and v >= cfg.vocab_size:
            raise ValueError(f"{name}={v} is outside the vocabulary (vocab_size={cfg.vocab_size}).")
    return _generate(model, params, input_ids, attention_mask, gen)


def decode_texts(tokenizer, sequences) -> list[str]:
    """Generated ids `[B, L]` -> strings: drop the start token, cut at the first EOS after it,
    drop pads, then `batch_decode(skip_special_tokens=True)` (language codes, <s>, </s> ...)."""
    seqs = np.asarray(sequences)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for row in seqs[:, 1:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        rows.append([t for t in row if t != pad])
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
