"""Flax Linen BART / mBART (`Seq2SeqLM`), numerically equal to HF PyTorch, quantizable.

Parameter names mirror the HF PyTorch names (`shared`, `encoder/layers_0/self_attn/q_proj/
kernel`, ...) so `dq_jax.hf` converts by renaming and transposing only.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dq_jax.model_config import ModelConfig
from dq_jax.layers import Attention, QDense, QEmbed
from dq_jax.quant_config import ELASTIC, QuantConfig, split_elastic

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


@flax.struct.dataclass
class EncoderOutput:
    last_hidden_state: jax.Array  # [B, S, D]
    hidden_states: tuple | None = None  # L+1 x [B, S, D]; 0 = embedding output
    attentions: tuple | None = None  # L x [B, H, S, S]


@flax.struct.dataclass
class DecoderOutput:
    logits: jax.Array  # [B, T, V], fp32
    hidden_states: tuple | None = None
    attentions: tuple | None = None  # L x [B, H, T, T]
    cross_attentions: tuple | None = None  # L x [B, H, T, S]
    cache: dict | None = None


@flax.struct.dataclass
class Seq2SeqOutput:
    logits: jax.Array
    encoder_last_hidden_state: jax.Array
    encoder_hidden_states: tuple | None = None
    decoder_hidden_states: tuple | None = None
    encoder_attentions: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None


class _Layer(nn.Module):
    """One encoder (no cross-attention) or decoder layer, post-LN (BART) or pre-LN (mBART)."""

    cfg: ModelConfig
    decoder: bool
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c, side = self.cfg, "decoder" if self.decoder else "encoder"
        heads, ffn = getattr(c, f"{side}_attention_heads"), getattr(c, f"{side}_ffn_dim")
        attn = lambda: Attention(heads, c.d_model, c.attention_dropout, self.quant, self.dtype,
                                 self.param_dtype, c.init_std)
        norm = lambda: nn.LayerNorm(c.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        dense = lambda n, signed=True: QDense(n, self.quant, self.dtype, self.param_dtype, c.init_std, signed)
        self.self_attn, self.self_attn_layer_norm = attn(), norm()
        if self.decoder:
            self.encoder_attn, self.encoder_attn_layer_norm = attn(), norm()
        # fc2 reads activations after GELU/ReLU: (almost) non-negative, the unsigned quantizer's case
        self.fc1, self.fc2, self.final_layer_norm = dense(ffn), dense(c.d_model, False), norm()
        self.drop, self.act_drop = nn.Dropout(c.dropout), nn.Dropout(c.activation_dropout)
        if c.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function={c.activation_function!r} is not supported; "
                             f"choose one of {sorted(ACTIVATIONS)}.")

    def _residual(self, h, fn, norm, det):
        x = norm(h) if self.cfg.pre_layer_norm else h
        out, *aux = fn(x)
        h = h + self.drop(out, deterministic=det)
        return (h if self.cfg.pre_layer_norm else norm(h)), aux

    def _ffn(self, x, det):
        x = self.act_drop(ACTIVATIONS[self.cfg.activation_function](self.fc1(x)), deterministic=det)
        return (self.fc2(x),)

    def cross_kv(self, enc: jax.Array) -> dict:
        return self.encoder_attn.project_kv(enc)

    def __call__(self, h, mask, enc=None, enc_mask=None, cache=None, deterministic=True):
        """h `[B, T, D]`; mask/enc_mask: booleans broadcastable to `[B, H, T, S]`.
        Returns (h, self-attention probs, cross-attention probs or None, cache or None)."""
        det, cache = deterministic, cache or {}
        self_cache = ({"k": cache["self_k"], "v": cache["self_v"], "index": cache["index"]}
                      if cache else None)
        h, (p_self, new_self) = self._residual(
            h, lambda x: self.self_attn(x, mask=mask, cache=self_cache, deterministic=det),
            self.self_attn_layer_norm, det)
        p_cross, new_cache = None, None
        if self.decoder:
            cross_cache = {"k": cache["cross_k"], "v": cache["cross_v"]} if cache else None
            h, (p_cross, _) = self._residual(
                h, lambda x: self.encoder_attn(x, kv=enc, mask=enc_mask, cache=cross_cache,
                                               deterministic=det),
                self.encoder_attn_layer_norm, det)
            if cache:
                new_cache = dict(cache, self_k=new_self["k"], self_v=new_self["v"],
                                 index=new_self["index"])
        h, _ = self._residual(h, lambda x: self._ffn(x, det), self.final_layer_norm, det)
        return h, p_self, p_cross, new_cache


class _Stack(nn.Module):
    """Embeddings + layers (+ mBART's final layer norm) of one side."""

    cfg: ModelConfig
    decoder: bool
    embed: QEmbed
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.cfg
        n = c.decoder_layers if self.decoder else c.encoder_layers
        self.embed_positions = nn.Embed(c.max_position_embeddings + POSITION_OFFSET, c.d_model,
                                        embedding_init=nn.initializers.normal(c.init_std),
                                        param_dtype=self.param_dtype, dtype=self.dtype)
        norm = lambda: nn.LayerNorm(c.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        self.layernorm_embedding = norm()
        self.layers = [_Layer(c, self.decoder, self.quant, self.dtype, self.param_dtype)
                       for _ in range(n)]
        if c.pre_layer_norm:
            self.layer_norm = norm()
        self.drop = nn.Dropout(c.dropout)

    def embed_inputs(self, ids, start, deterministic):
        """ids `[B, T]`, start: position of ids[:, 0] (the cache index when decoding)."""
        scale = self.cfg.d_model ** 0.5 if self.cfg.scale_embedding else 1.0
        x = self.embed(ids) * jnp.asarray(scale, self.dtype)
        pos = self.embed_positions(start + jnp.arange(ids.shape[1]) + POSITION_OFFSET)  # [T, D]
        h = self.layernorm_embedding(x + pos[None])
        return self.drop(h, deterministic=deterministic)

    def init_cross_kv(self, enc):
        return [layer.cross_kv(enc) for layer in self.layers]

    def __call__(self, ids, mask, enc=None, enc_mask=None, cache=None, deterministic=True):
        start = cache["index"] if cache else 0
        h = self.embed_inputs(ids, start, deterministic)
        states, self_probs, cross_probs, new_layers = [h], [], [], []
        for i, layer in enumerate(self.layers):
            layer_cache = dict(cache["layers"][i], index=cache["index"]) if cache else None
            h, p_self, p_cross, layer_cache = layer(h, mask, enc, enc_mask, layer_cache, deterministic)
            states.append(h)
            self_probs.append(p_self)
            cross_probs.append(p_cross)
            if cache:
                new_layers.append({k: v for k, v in layer_cache.items() if k != "index"})
        if self.cfg.pre_layer_norm:
            h = self.layer_norm(h)
            states[-1] = h  # as HF: the last hidden state is the normalized one
        new_cache = {"index": cache["index"] + ids.shape[1], "layers": new_layers} if cache else None
        return h, tuple(states), tuple(self_probs), tuple(cross_probs), new_cache


def padding_mask(mask: jax.Array) -> jax.Array:
    """`[B, S]` 1/0 -> boolean `[B, 1, 1, S]` (True = attend)."""
    return mask.astype(bool)[:, None, None, :]


def causal_mask(q_len: int, k_len: int, start=0) -> jax.Array:
    """Query t (at position start+t) sees keys j <= start+t: boolean `[1, 1, T, K]`."""
    q_pos = start + jnp.arange(q_len)[:, None]
    return (jnp.arange(k_len)[None, :] <= q_pos)[None, None]


class Seq2SeqLM(nn.Module):
    """BART/mBART for conditional generation; `quant` turns it into a fake-quantized student."""

    cfg: ModelConfig
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.cfg
        self.shared = QEmbed(c.vocab_size, c.d_model, c.pad_token_id, self.quant, self.dtype,
                             self.param_dtype, c.init_std)
        stack = lambda dec: _Stack(c, dec, self.shared, self.quant, self.dtype, self.param_dtype)
        self.encoder, self.decoder = stack(False), stack(True)
        self.final_logits_bias = self.param("final_logits_bias", nn.initializers.zeros,
                                            (1, c.vocab_size), self.param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                    kernel_init=nn.initializers.normal(c.init_std))

    def encode(self, input_ids, attention_mask=None, output_hidden_states=False,
               output_attentions=False, deterministic=True) -> EncoderOutput:
        """input_ids `[B, S]` -> EncoderOutput (last_hidden_state `[B, S, D]`)."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        h, states, probs, _, _ = self.encoder(input_ids, padding_mask(attention_mask),
                                              deterministic=deterministic)
        return EncoderOutput(h, states if output_hidden_states else None,
                             probs if output_attentions else None)

    def init_cache(self, encoder_hidden_states, max_length: int) -> dict:
        """Empty self-attention buffers of `max_length` plus the projected encoder keys/values."""
        c = self.cfg
        b, h = encoder_hidden_states.shape[0], c.decoder_attention_heads
        zeros = jnp.zeros((b, h, max_length, c.d_model // h), self.dtype)
        layers = [{"self_k": zeros, "self_v": zeros, "cross_k": kv["k"], "cross_v": kv["v"]}
                  for kv in self.decoder.init_cross_kv(encoder_hidden_states)]
        return {"index": jnp.array(0, jnp.int32), "layers": layers}

    def decode(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask=None,
               decoder_attention_mask=None, cache=None, output_hidden_states=False,
               output_attentions=False, deterministic=True) -> DecoderOutput:
        """decoder_input_ids `[B, T]` -> logits `[B, T, V]`.

        With `cache` (from `init_cache`), the ids are the next T positions and
        `decoder_attention_mask`, if given, covers the whole buffer `[B, max_length]`.
        """
        b, t = decoder_input_ids.shape
        enc_mask = padding_mask(encoder_attention_mask if encoder_attention_mask is not None
                                else jnp.ones(encoder_hidden_states.shape[:2], jnp.int32))
        if cache is None:
            mask = causal_mask(t, t)
        else:
            mask = causal_mask(t, cache["layers"][0]["self_k"].shape[2], cache["index"])
        if decoder_attention_mask is not None:
            mask = mask & padding_mask(decoder_attention_mask)
        h, states, p_self, p_cross, cache = self.decoder(
            decoder_input_ids, mask, encoder_hidden_states, enc_mask, cache, deterministic)
        head = self.shared.attend(h) if self.cfg.tie_word_embeddings else self.lm_head(h)
        logits = head.astype(jnp.float32) + self.final_logits_bias.astype(jnp.float32)
        keep = lambda x, flag: x if flag else None
        return DecoderOutput(logits, keep(states, output_hidden_states),
                             keep(p_self, output_attentions), keep(p_cross, output_attentions), cache)

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None,
                 decoder_attention_mask=None, output_hidden_states=False, output_attentions=False,
                 deterministic=True) -> Seq2SeqOutput:
        enc = self.encode(input_ids, attention_mask, output_hidden_states, output_attentions,
                          deterministic)
        dec = self.decode(decoder_input_ids, enc.last_hidden_state, attention_mask,
                          decoder_attention_mask, None, output_hidden_states, output_attentions,
                          deterministic)
        return Seq2SeqOutput(dec.logits, enc.last_hidden_state, enc.hidden_states,
                             dec.hidden_states, enc.attentions, dec.attentions, dec.cross_attentions)


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
        weights, input_ids, attention_mask, decoder_input_ids)
    return dict(weights, **{ELASTIC: jax.device_get(state[ELASTIC])})
