"""Building blocks shared by encoder and decoder: quantized Dense/Embed and attention.

Quantization enters only here: `QDense` fake-quantizes its kernel and its input, `QEmbed`
its looked-up rows, `Attention` its scaled queries, keys, probabilities and values. With
`quant=None` (or no bits set) every quantizer is the identity and the math is exactly the
full-precision model's. Elastic (TBT) activation quantizers keep their learned step size in
the `elastic` collection, initialized from the first batch they see: run the model once with
`mutable=["elastic"]` on real data to create them (`modeling.init_elastic`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dq_jax.quant_config import ELASTIC, QuantConfig

Dtype = Any
NEG_INF = float(jnp.finfo(jnp.float32).min)


def _no_quant(quant: QuantConfig | None) -> QuantConfig:
    return quant if quant is not None else QuantConfig()


class ActQuant(nn.Module):
    """Activation fake-quantizer: the dynamic symmetric one of DQ-BART, or TBT's elastic one
    (1-2 bits) with a learned step size `alpha` (float32 scalar in the `elastic` collection).
    `signed=False` for non-negative-ish inputs (probabilities, post-GELU)."""

    quant: QuantConfig | None = None
    signed: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        q = _no_quant(self.quant)
        if not q.elastic:
            return q.act_fn()(x)
        from dq_jax import quant as qz
        bits, signed = q.act_bits, self.signed
        alpha = self.variable(ELASTIC, "alpha", lambda: qz.elastic_init(jax.lax.stop_gradient(x), bits, signed))
        axes = tuple(range(1, x.ndim)) if q.act_scale == "example" else None
        return qz.elastic(x, alpha.value, bits, signed, axes)


class QDense(nn.Module):
    """`y = q_a(x) @ q_w(kernel) + bias`; kernel is `[in, out]` (HF weight transposed)."""

    features: int
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02
    signed_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        q = _no_quant(self.quant)
        kernel = self.param("kernel", nn.initializers.normal(self.init_std),
                            (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        # Per-row (per output channel) scales reduce over the input axis, 0 in Flax's layout.
        kernel = q.weight_fn(reduce_axes=(0,))(kernel)
        x = ActQuant(self.quant, self.signed_input, name="act")(x)
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


def embedding_init(pad_id: int | None, std: float):
    """Normal(0, std) with a zero padding row, as HF initializes `nn.Embedding(padding_idx)`."""
    def init(key, shape, dtype=jnp.float32):
        table = std * jax.random.normal(key, shape, dtype)
        return table if pad_id is None else table.at[pad_id].set(0)
    return init


class QEmbed(nn.Module):
    """Token embedding `[V, D]` with per-row quantized lookups and a tied output head."""

    num_embeddings: int
    features: int
    pad_id: int | None = None
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02

    def setup(self):
        self.embedding = self.param("embedding", embedding_init(self.pad_id, self.init_std),
                                    (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.embedding, ids, axis=0)  # [..., D]
        if self.pad_id is not None:
            # torch's Embedding(padding_idx) sends no gradient to the padding row from lookups.
            rows = jnp.where((ids == self.pad_id)[..., None], jax.lax.stop_gradient(rows), rows)
        # Scales are per row, so quantizing the gathered rows equals gathering quantized rows.
        return _no_quant(self.quant).embed_fn()(rows).astype(self.dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        """LM head: `h [..., D] @ E^T -> [..., V]` with the full table (quantized if asked)."""
        q = _no_quant(self.quant)
        table = q.embed_fn()(self.embedding) if q.quantize_lm_head else self.embedding
        return jnp.einsum("...d,vd->...v", h.astype(self.dtype), table.astype(self.dtype))


class Attention(nn.Module):
    """Multi-head attention with HF BART's projections, optional KV cache and quantization.

    Cache layout (a plain dict): `k`, `v`: `[B, H, L, Dh]` buffers; `index`: int32 scalar,
    the number of positions already written. Cross-attention caches hold the projected
    encoder keys/values `[B, H, S, Dh]` and no index. Head-major, so that decoding reads the
    cache in the layout the attention matmuls want instead of transposing it every step.
    """

    num_heads: int
    d_model: int
    dropout: float = 0.0
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02

    def setup(self):
        dense = lambda: QDense(self.d_model, self.quant, self.dtype, self.param_dtype, self.init_std)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = dense(), dense(), dense(), dense()
        self.attn_dropout = nn.Dropout(self.dropout)
        self.q_act, self.k_act, self.v_act = (ActQuant(self.quant) for _ in range(3))
        self.p_act = ActQuant(self.quant, signed=False)

    def _heads(self, x):  # [B, T, D] -> [B, H, T, Dh]
        x = x.reshape(*x.shape[:-1], self.num_heads, self.d_model // self.num_heads)  # [B, T, H, Dh]
        return jnp.swapaxes(x, 1, 2)

    def project_kv(self, kv: jax.Array) -> dict:
        """Cross-attention cache from encoder states `[B, S, D]`."""
        return {"k": self._heads(self.k_proj(kv)), "v": self._heads(self.v_proj(kv))}

    def __call__(self, x, kv=None, mask=None, cache=None, deterministic=True):
        """x: `[B, T, D]`; kv: `[B, S, D]` for cross-attention; mask: boolean, broadcastable
        to `[B, H, T, S]`, True = attend. Returns (out `[B, T, D]`, probs `[B, H, T, S]`, cache)."""
        head_dim = self.d_model // self.num_heads
        q = self._heads(self.q_proj(x)) * jnp.asarray(head_dim ** -0.5, self.dtype)
        if kv is not None and cache is not None:  # cross-attention, keys precomputed
            k, v = cache["k"], cache["v"]
        else:
            src = x if kv is None else kv
            k, v = self._heads(self.k_proj(src)), self._heads(self.v_proj(src))
            if cache is not None:  # self-attention: write the new positions into the buffers
                idx = cache["index"]
                k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, 0, idx, 0))
                v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, 0, idx, 0))
                cache = {"k": k, "v": v, "index": idx + x.shape[1]}
        scores = jnp.einsum("bhtd,bhsd->bhts", self.q_act(q), self.k_act(k)).astype(jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1)  # [B, H, T, S], fp32
        p = self.attn_dropout(probs, deterministic=deterministic)
        out = jnp.einsum("bhts,bhsd->bthd", self.p_act(p.astype(self.dtype)), self.v_act(v))
        out = out.reshape(*out.shape[:2], self.d_model)  # [B, T, H, Dh] -> [B, T, D]
        return self.out_proj(out), probs, cache
