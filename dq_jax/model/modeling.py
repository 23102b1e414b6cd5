"""Flax Linen BART / mBART (`Seq2SeqLM`), numerically equal to HF PyTorch, quantizable.

Parameter names mirror the HF PyTorch names (`shared`, `encoder/layers_0/self_attn/q_proj/
kernel`, ...) so `dq_jax.model.hf` converts by renaming and transposing only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dq_jax.model import remat as remat_lib
from dq_jax.model.config import ModelConfig
from dq_jax.model.kv_cache import DecoderCache, KVCache
from dq_jax.model.layers import Attention, LMHead, QDense, QEmbed
from dq_jax.model.outputs import DecoderOutput, EncoderOutput, Seq2SeqOutput
from dq_jax.quant.config import ELASTIC, QuantConfig, split_elastic
from dq_jax.quant.policy import ActRole

Dtype = Any

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}
POSITION_OFFSET = 2  # BART's learned positions start at row 2 (a fairseq legacy)


class _Part(nn.Module):
    """What a stack and its layers share: the config, which side, quantization and dtypes."""

    cfg: ModelConfig
    decoder: bool
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _norm(self) -> nn.LayerNorm:
        return nn.LayerNorm(self.cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)


class _Layer(_Part):
    """One encoder (no cross-attention) or decoder layer, post-LN (BART) or pre-LN (mBART)."""

    def setup(self):
        c, side = self.cfg, "decoder" if self.decoder else "encoder"
        heads, ffn = getattr(c, f"{side}_attention_heads"), getattr(c, f"{side}_ffn_dim")
        attn = lambda: Attention(
            heads, c.d_model, c.attention_dropout, self.quant, self.dtype, self.param_dtype, c.init_std
        )
        dense = lambda n, role=ActRole.LINEAR_INPUT: QDense(
            n, self.quant, self.dtype, self.param_dtype, c.init_std, role
        )
        self.self_attn, self.self_attn_layer_norm = attn(), self._norm()
        if self.decoder:
            self.encoder_attn, self.encoder_attn_layer_norm = attn(), self._norm()
        self.fc1, self.fc2, self.final_layer_norm = dense(ffn), dense(c.d_model, ActRole.FFN_HIDDEN), self._norm()
        self.drop, self.act_drop = nn.Dropout(c.dropout), nn.Dropout(c.activation_dropout)
        if c.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"activation_function={c.activation_function!r} is not supported; choose one of {sorted(ACTIVATIONS)}."
            )

    def _input(self, h, norm):
        """A sublayer's input: pre-LN normalizes it, post-LN the residual sum instead."""
        return norm(h) if self.cfg.pre_layer_norm else h

    def _residual(self, h, out, norm, det):
        """`h` plus the sublayer's output `out` (both `[B, T, D]`), then post-LN's norm."""
        h = h + self.drop(out, deterministic=det)
        return h if self.cfg.pre_layer_norm else norm(h)

    def _ffn(self, x, det):
        x = self.act_drop(ACTIVATIONS[self.cfg.activation_function](self.fc1(x)), deterministic=det)
        return self.fc2(x)

    def __call__(self, h, mask, enc=None, enc_mask=None, cache=None, index=None, deterministic=True):
        """h `[B, T, D]`; mask/enc_mask: booleans broadcastable to `[B, H, T, S]`; enc: encoder
        states `[B, S, D]`, or their projected `KVCache` when decoding; cache: the self-attention
        `KVCache` that this step writes at `index` (see `Attention`).
        Returns (h, self-attention probs, cross-attention probs or None, written cache or None)."""
        det, norm = deterministic, self.self_attn_layer_norm
        out, p_self, cache = self.self_attn(
            self._input(h, norm), mask=mask, cache=cache, index=index, deterministic=det
        )
        h = self._residual(h, out, norm, det)
        p_cross = None
        if self.decoder:
            norm = self.encoder_attn_layer_norm
            out, p_cross, _ = self.encoder_attn(self._input(h, norm), kv=enc, mask=enc_mask, deterministic=det)
            h = self._residual(h, out, norm, det)
        norm = self.final_layer_norm
        h = self._residual(h, self._ffn(self._input(h, norm), det), norm, det)
        return h, p_self, p_cross, cache


class _Stack(_Part):
    """Embeddings + layers (+ mBART's final layer norm) of one side."""

    embed: QEmbed = dataclasses.field(kw_only=True)  # the token embedding both sides share
    remat: str = dataclasses.field(default="none", kw_only=True)  # a `dq_jax.model.remat` name, per layer

    def setup(self):
        c = self.cfg
        n = c.decoder_layers if self.decoder else c.encoder_layers
        self.embed_positions = nn.Embed(
            c.max_position_embeddings + POSITION_OFFSET,
            c.d_model,
            embedding_init=nn.initializers.normal(c.init_std),
            param_dtype=self.param_dtype,
            dtype=self.dtype,
        )
        self.layernorm_embedding = self._norm()
        self.layers = [_Layer(c, self.decoder, self.quant, self.dtype, self.param_dtype) for _ in range(n)]
        if c.pre_layer_norm:
            self.layer_norm = self._norm()
        self.drop = nn.Dropout(c.dropout)

    def embed_inputs(self, ids, start, deterministic):
        """ids `[B, T]`, start: position of ids[:, 0] (the cache index when decoding)."""
        scale = self.cfg.d_model**0.5 if self.cfg.scale_embedding else 1.0
        x = self.embed(ids) * jnp.asarray(scale, self.dtype)
        pos = self.embed_positions(start + jnp.arange(ids.shape[1]) + POSITION_OFFSET)  # [T, D]
        h = self.layernorm_embedding(x + pos[None])
        return self.drop(h, deterministic=deterministic)

    def init_cache(self, enc, max_length: int) -> DecoderCache:
        """Zero self-attention buffers `[B, H, max_length, Dh]`, the keys/values of enc `[B, S, D]`
        (quantized once: `Attention.cross_kv`)."""
        c = self.cfg
        b, h = enc.shape[0], c.decoder_attention_heads
        zeros = jnp.zeros((b, h, max_length, c.d_model // h), self.dtype)
        return DecoderCache(
            index=jnp.array(0, jnp.int32),
            self_attn=tuple(KVCache(zeros, zeros) for _ in self.layers),
            cross_attn=tuple(layer.encoder_attn.cross_kv(enc) for layer in self.layers),
        )

    def __call__(self, ids, mask, enc=None, enc_mask=None, cache=None, deterministic=True):
        """ids `[B, T]`; with a `DecoderCache`, the next T positions, attending to `cache.cross_attn`
        instead of `enc`. Returns (h, hidden states, self-attention probs, cross-attention probs,
        the cache advanced by T or None)."""
        start = 0 if cache is None else cache.index
        h = self.embed_inputs(ids, start, deterministic)
        states, self_probs, cross_probs, written = [h], [], [], []
        run = remat_lib.checkpointed(self.remat, lambda layer, *args: layer(*args, deterministic=deterministic))
        for i, layer in enumerate(self.layers):
            layer_enc, layer_cache = (enc, None) if cache is None else (cache.cross_attn[i], cache.self_attn[i])
            h, p_self, p_cross, layer_cache = run(layer, h, mask, layer_enc, enc_mask, layer_cache, start)
            states.append(h)
            self_probs.append(p_self)
            cross_probs.append(p_cross)
            written.append(layer_cache)
        if self.cfg.pre_layer_norm:
            h = self.layer_norm(h)
            states[-1] = h  # as HF: the last hidden state is the normalized one
        if cache is not None:
            cache = cache.replace(index=start + ids.shape[1], self_attn=tuple(written))
        return h, tuple(states), tuple(self_probs), tuple(cross_probs), cache


def padding_mask(mask: jax.Array) -> jax.Array:
    """`[B, S]` 1/0 -> boolean `[B, 1, 1, S]` (True = attend)."""
    return mask.astype(bool)[:, None, None, :]


def causal_mask(q_len: int, k_len: int, start=0) -> jax.Array:
    """Query t (at position start+t) sees keys j <= start+t: boolean `[1, 1, T, K]`."""
    q_pos = start + jnp.arange(q_len)[:, None]
    return (jnp.arange(k_len)[None, :] <= q_pos)[None, None]


class Seq2SeqLM(nn.Module):
    """BART/mBART for conditional generation; `quant` turns it into a fake-quantized student.

    `remat` (`none` | `full` | `dots`, see `dq_jax.model.remat`) checkpoints every encoder and decoder
    layer: it changes only what the backward pass keeps, not the params or the outputs, and
    generation runs unchanged (it matters only under differentiation)."""

    cfg: ModelConfig
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"

    def setup(self):
        c = self.cfg
        self.shared = QEmbed(
            c.vocab_size, c.d_model, c.pad_token_id, self.quant, self.dtype, self.param_dtype, c.init_std
        )
        stack = lambda dec: _Stack(
            c, dec, self.quant, self.dtype, self.param_dtype, embed=self.shared, remat=self.remat
        )
        self.encoder, self.decoder = stack(False), stack(True)
        self.final_logits_bias = self.param(
            "final_logits_bias", nn.initializers.zeros, (1, c.vocab_size), self.param_dtype
        )
        if not c.tie_word_embeddings:
            self.lm_head = LMHead(c.vocab_size, self.dtype, self.param_dtype, c.init_std)

    def encode(
        self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False, deterministic=True
    ) -> EncoderOutput:
        """input_ids `[B, S]` -> EncoderOutput (last_hidden_state `[B, S, D]`)."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        h, states, probs, _, _ = self.encoder(input_ids, padding_mask(attention_mask), deterministic=deterministic)
        return EncoderOutput(h, states if output_hidden_states else None, probs if output_attentions else None)

    def init_cache(self, encoder_hidden_states, max_length: int) -> DecoderCache:
        """Empty self-attention buffers of `max_length` plus the projected encoder keys/values
        (encoder_hidden_states `[B, S, D]`)."""
        return self.decoder.init_cache(encoder_hidden_states, max_length)

    def decode(
        self,
        decoder_input_ids,
        encoder_hidden_states,
        encoder_attention_mask=None,
        decoder_attention_mask=None,
        cache=None,
        output_hidden_states=False,
        output_attentions=False,
        deterministic=True,
    ) -> DecoderOutput:
        """decoder_input_ids `[B, T]` -> logits `[B, T, V]`.

        With `cache` (from `init_cache`), the ids are the next T positions and
        `decoder_attention_mask`, if given, covers the whole buffer `[B, max_length]`.
        """
        _b, t = decoder_input_ids.shape
        enc_mask = padding_mask(
            encoder_attention_mask
            if encoder_attention_mask is not None
            else jnp.ones(encoder_hidden_states.shape[:2], jnp.int32)
        )
        if cache is None:
            mask = causal_mask(t, t)
        else:
            mask = causal_mask(t, cache.max_length, cache.index)
        if decoder_attention_mask is not None:
            mask = mask & padding_mask(decoder_attention_mask)
        h, states, p_self, p_cross, cache = self.decoder(
            decoder_input_ids, mask, encoder_hidden_states, enc_mask, cache, deterministic
        )
        head = self.shared.attend(h) if self.cfg.tie_word_embeddings else self.lm_head(h)
        logits = head.astype(jnp.float32) + self.final_logits_bias.astype(jnp.float32)
        keep = lambda x, flag: x if flag else None
        return DecoderOutput(
            logits,
            keep(states, output_hidden_states),
            keep(p_self, output_attentions),
            keep(p_cross, output_attentions),
            cache,
        )

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        output_hidden_states=False,
        output_attentions=False,
        deterministic=True,
    ) -> Seq2SeqOutput:
        enc = self.encode(input_ids, attention_mask, output_hidden_states, output_attentions, deterministic)
        dec = self.decode(
            decoder_input_ids,
            enc.last_hidden_state,
            attention_mask,
            decoder_attention_mask,
            None,
            output_hidden_states,
            output_attentions,
            deterministic,
        )
        return Seq2SeqOutput(
            dec.logits,
            enc.last_hidden_state,
            enc.hidden_states,
            dec.hidden_states,
            enc.attentions,
            dec.attentions,
            dec.cross_attentions,
        )


def variables(params: dict) -> dict:
    """Flax variables for `apply` from a trainable tree (see `split_elastic`)."""
    weights, elastic = split_elastic(params)
    return {"params": weights} if elastic is None else {"params": weights, ELASTIC: elastic}


def init_elastic(model: Seq2SeqLM, params: dict, input_ids, attention_mask, decoder_input_ids) -> dict:
    """Adds the elastic step sizes, initialized from this batch (TBT's data-dependent init),
    to a student's params; a no-op for students without elastic activations."""
    if model.quant is None or not model.quant.elastic:
        return params
    weights, _ = split_elastic(params)
    _, state = jax.jit(lambda p, a, m, d: model.apply({"params": p}, a, m, d, mutable=[ELASTIC]))(
        weights, input_ids, attention_mask, decoder_input_ids
    )
    return dict(weights, **{ELASTIC: jax.device_get(state[ELASTIC])})


def abstract_params(cfg: ModelConfig, quant=None) -> dict:
    """Param shapes (`jax.ShapeDtypeStruct`) of a model, with no memory allocated."""
    return abstract_variables(cfg, quant)["params"]


def abstract_variables(cfg: ModelConfig, quant=None) -> dict:
    """All Flax collections of a model as shapes: `params`, plus `elastic` for TBT students."""
    model = Seq2SeqLM(cfg, quant)
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, decoder_input_ids=ids))


def abstract_trainable(cfg: ModelConfig, quant=None) -> dict:
    """The trainable tree's shapes: params, plus the `elastic` step sizes of a TBT student."""
    v = abstract_variables(cfg, quant)
    return dict(v["params"], **({ELASTIC: v[ELASTIC]} if ELASTIC in v else {}))
