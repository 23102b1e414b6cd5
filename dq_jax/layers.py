"""Building blocks shared by encoder and decoder: quantized Dense/Embed and attention.

Quantization enters only here: `QDense` fake-quantizes its kernel and its input, `QEmbed`
its looked-up rows, `Attention` its scaled queries, keys, probabilities and values, each with
the quantizer `dq_jax.policy` gives its role. With `quant=None` (or no bits set) every
quantizer is the identity and the math is exactly the full-precision model's. Elastic (TBT) activation quantizers keep their learned step size in
the `elastic` collection, initialized from the first batch they see: run the model once with
`mutable=["elastic"]` on real data to create them (`modeling.init_elastic`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dq_jax.kv_cache import KVCache
from dq_jax.policy import ActRole, Role, act_rule, tied_lm_head_rule, weight_rule
from dq_jax.quant_config import ELASTIC, QuantConfig

Dtype = Any
NEG_INF = float(jnp.finfo(jnp.float32).min)


class ActQuant(nn.Module):
    """Activation fake-quantizer of one `role`: the dynamic symmetric one of DQ-BART, or TBT's
    elastic one (1-2 bits) with a learned step size `alpha` (float32 scalar in the `elastic`
    collection, initialized from the first activations it sees)."""

    quant: QuantConfig | None = None
    role: ActRole = ActRole.LINEAR_INPUT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rule = act_rule(self.role, self.quant)
        if rule is None:
            return x
        if not rule.elastic:
            return rule.apply(x)
        alpha = self.variable(ELASTIC, "alpha", lambda: rule.init_step_size(jax.lax.stop_gradient(x)))
        return rule.apply(x, alpha.value)


class QDense(nn.Module):
    """`y = q_a(x) @ q_w(kernel) + bias`; kernel is `[in, out]` (HF weight transposed)."""

    features: int
    quant: QuantConfig | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02
    input_role: ActRole = ActRole.LINEAR_INPUT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.normal(self.init_std),
                            (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        rule = weight_rule(Role.LINEAR, self.quant)
        kernel = rule.fake(kernel) if rule else kernel
        x = ActQuant(self.quant, self.input_role, name="act")(x)
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
        rule = weight_rule(Role.TOKEN_EMBEDDING, self.quant)
        return (rule.fake(rows) if rule else rows).astype(self.dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        """LM head: `h [..., D] @ E^T -> [..., V]` with the full table (quantized if asked)."""
        rule = tied_lm_head_rule(self.quant)
        table = rule.fake(self.embedding) if rule else self.embedding
        return jnp.einsum("...d,vd->...v", h.astype(self.dtype), table.astype(self.dtype))


class Attention(nn.Module):
    """Multi-head attention with HF BART's projections, optional KV cache and quantization.

    Decoding uses `kv_cache.KVCache` (head-major `[B, H, L, Dh]`): self-attention writes the new
    positions into buffers at a given index, cross-attention reads the encoder states'
    keys/values projected once by `project_kv`.
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
        self.q_act, self.k_act, self.v_act = (ActQuant(self.quant, r) for r in (ActRole.QUERY, ActRole.KEY,
                                                                                  ActRole.VALUE))
        self.p_act = ActQuant(self.quant, ActRole.PROBS)

    def _heads(self, x):  # [B, T, D] -> [B, H, T, Dh]
        x = x.reshape(*x.shape[:-1], self.num_heads, self.d_model // self.num_heads)  # [B, T, H, Dh]
        return jnp.swapaxes(x, 1, 2)

    def project_kv(self, kv: jax.Array) -> KVCache:
        """Keys and values `[B, H, S, Dh]` of states `[B, S, D]`."""
        return KVCache(self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv)))

    def __call__(self, x, kv=None, mask=None, cache=None, index=None, deterministic=True):
        """x: `[B, T, D]`; kv: cross-attention's encoder states `[B, S, D]`, or their
        `project_kv` when decoding; mask: boolean, broadcastable to `[B, H, T, S]`, True =
        attend; cache: self-attention buffers (`[B, H, L, Dh]`) that x's keys/values are written
        into at position `index` (int32 scalar), attending over all L. Returns (out `[B, T, D]`,
        probs `[B, H, T, S]`, the written cache or None)."""
        head_dim = self.d_model // self.num_heads
        q = self._heads(self.q_proj(x)) * jnp.asarray(head_dim ** -0.5, self.dtype)
        keys = kv if isinstance(kv, KVCache) else self.project_kv(x if kv is None else kv)
        if cache is not None:  # decoding: attend over the earlier positions too
            keys = cache = cache.write(keys, index)
        k, v = keys.k, keys.v
        scores = jnp.einsum("bhtd,bhsd->bhts", self.q_act(q), self.k_act(k)).astype(jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1)  # [B, H, T, S], fp32
        p = self.attn_dropout(probs, deterministic=deterministic)
        out = jnp.einsum("bhts,bhsd->bthd", self.p_act(p.astype(self.dtype)), self.v_act(v))
        out = out.reshape(*out.shape[:2], self.d_model)  # [B, T, H, Dh] -> [B, T, D]
        return self.out_proj(out), probs, cache
