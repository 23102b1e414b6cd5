"""Building blocks shared by encoder and decoder: quantized Dense/Embed and attention.

Quantization enters only here: `QDense` fake-quantizes its kernel and its input, `QEmbed`
its looked-up rows, `Attention` its scaled queries, keys, probabilities and values, each with
the quantizer `dq_jax.quant.policy` gives its role. With `quant=None` (or no bits set) every
quantizer is the identity and the math is exactly the full-precision model's. Elastic (TBT)
activation quantizers keep their learned step size in the `elastic` collection, initialized from
the first batch they see: run the model once with `mutable=["elastic"]` on real data to create
them (`modeling.init_elastic`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dq_jax.model import precision
from dq_jax.model.codes_matmul import codes_einsum
from dq_jax.model.kv_cache import KVCache
from dq_jax.quant.codes import Codes
from dq_jax.quant.config import ELASTIC, QuantConfig
from dq_jax.quant.policy import ActRole, ActRule, Role, act_rule, tied_lm_head_rule, weight_rule

Dtype = Any
NEG_INF = float(jnp.finfo(jnp.float32).min)


class ActQuant(nn.Module):
    """Activation quantizer of one `role`: the dynamic symmetric one of DQ-BART, or TBT's
    elastic one (1-2 bits) with a learned step size `alpha` (float32 scalar in the `elastic`
    collection, initialized from the first activations it sees). Called, it fake-quantizes;
    a product on codes asks it for its `rule` and `step_size` instead."""

    quant: QuantConfig | None = None
    role: ActRole = ActRole.LINEAR_INPUT

    @property
    def rule(self) -> ActRule | None:
        return act_rule(self.role, self.quant)

    @nn.compact
    def step_size(self, x: jax.Array) -> jax.Array | None:
        """The learned step size of an elastic quantizer (created from `x` on first use), else None."""
        rule = self.rule
        if rule is None or not rule.elastic:
            return None
        return self.variable(ELASTIC, "alpha", lambda: rule.init_step_size(jax.lax.stop_gradient(x))).value

    def __call__(self, x: jax.Array) -> jax.Array:
        rule = self.rule
        return x if rule is None else rule.fake(x, self.step_size(x))

    def ahead(self, x: jax.Array):
        """`x` quantized once for products that reuse it: its `Codes` when products run on
        codes, else its fake-quantized value (`x` itself when this role is not quantized)."""
        rule = self.rule
        if rule is None:
            return x
        return (rule.codes if self.quant.compute == "codes" else rule.fake)(x, self.step_size(x))


def _weight(w, rule):
    """A weight as fake mode multiplies it: codes quantized ahead dequantized, else fake-quantized."""
    if isinstance(w, Codes):
        return w.dequantize()
    return rule.fake(w) if rule else w


def _on_codes(quant: QuantConfig | None, *rules) -> bool:
    """Whether a product runs on codes: `compute="codes"` and both operands quantized."""
    return quant is not None and quant.compute == "codes" and all(r is not None for r in rules)


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
        """x `[..., in]` -> `[..., out]`. The kernel may be `Codes` (quantized once, for generation)."""
        kernel = self.param(
            "kernel", nn.initializers.normal(self.init_std), (x.shape[-1], self.features), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        rule = weight_rule(Role.LINEAR, self.quant)
        act = ActQuant(self.quant, self.input_role, name="act")
        if _on_codes(self.quant, rule, act.rule):
            y = codes_einsum("...i,io->...o", x, kernel, act.rule, rule, act.step_size(x), dtype=self.dtype)
        else:
            kernel = _weight(kernel, rule)
            y = precision.einsum("...i,io->...o", act(x), kernel, self.dtype)
        return y + bias.astype(self.dtype)


class LMHead(nn.Module):
    """The separate output projection of an untied model: `h [..., D] @ kernel [D, V]`."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.normal(self.init_std), (h.shape[-1], self.features), self.param_dtype
        )
        return precision.einsum("...d,dv->...v", h, kernel, self.dtype)


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
        self.embedding = self.param(
            "embedding",
            embedding_init(self.pad_id, self.init_std),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids `[...]` -> rows `[..., D]`. The table may be `Codes` (quantized once, per row)."""
        if isinstance(self.embedding, Codes):  # gather the codes and their row scales
            table = self.embedding
            return (
                jnp.take(table.values, ids, axis=0).astype(jnp.float32) * jnp.take(table.scales, ids, axis=0)
            ).astype(self.dtype)
        rows = jnp.take(self.embedding, ids, axis=0)  # [..., D]
        if self.pad_id is not None:
            # torch's Embedding(padding_idx) sends no gradient to the padding row from lookups.
            rows = jnp.where((ids == self.pad_id)[..., None], jax.lax.stop_gradient(rows), rows)
        # Scales are per row, so quantizing the gathered rows equals gathering quantized rows.
        rule = weight_rule(Role.TOKEN_EMBEDDING, self.quant)
        return (rule.fake(rows) if rule else rows).astype(self.dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        """LM head: `h [..., D] @ E^T -> [..., V]` with the full table (quantized if asked).

        `h` is not quantized, so there is no product of codes; a table held as `Codes` (tied and
        quantized) multiplies its int8 codes converted in the dot and scales each vocabulary
        row's result, which keeps the [V, D] table resident in int8."""
        table = self.embedding
        if isinstance(table, Codes):
            y = precision.einsum("...d,vd->...v", h, table.values, self.dtype)  # |codes| <= 128: exact in bf16
            return (y.astype(jnp.float32) * table.scales[:, 0]).astype(self.dtype)
        rule = tied_lm_head_rule(self.quant)
        table = rule.fake(table) if rule else table
        return precision.einsum("...d,vd->...v", h, table, self.dtype)


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
        self.q_act, self.k_act, self.v_act = (
            ActQuant(self.quant, r) for r in (ActRole.QUERY, ActRole.KEY, ActRole.VALUE)
        )
        self.p_act = ActQuant(self.quant, ActRole.PROBS)

    def _product(self, subscripts: str, a, b, act_a: ActQuant, act_b: ActQuant, b_ready: bool = False) -> jax.Array:
        """`einsum` of two quantized activations: on their codes, or of their fake-quantized
        values. `b_ready`: `b` went through `act_b.ahead` already (decoding's cross-attention)."""
        if _on_codes(self.quant, act_a.rule, act_b.rule):
            alpha_a = act_a.step_size(a)
            alpha_b = None if isinstance(b, Codes) else act_b.step_size(b)
            return codes_einsum(subscripts, a, b, act_a.rule, act_b.rule, alpha_a, alpha_b, dtype=self.dtype)
        if isinstance(b, Codes):
            b = b.dequantize(self.dtype)
        return precision.einsum(subscripts, act_a(a), b if b_ready else act_b(b), self.dtype)

    def _heads(self, x):  # [B, T, D] -> [B, H, T, Dh]
        x = x.reshape(*x.shape[:-1], self.num_heads, self.d_model // self.num_heads)  # [B, T, H, Dh]
        return jnp.swapaxes(x, 1, 2)

    def project_kv(self, kv: jax.Array) -> KVCache:
        """Keys and values `[B, H, S, Dh]` of states `[B, S, D]`."""
        return KVCache(self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv)))

    def cross_kv(self, enc: jax.Array) -> KVCache:
        """Cross-attention's keys and values of encoder states `[B, S, D]` for decoding, already
        through their activation quantizers: every step would quantize the same tensors to the
        same codes, so they are quantized once, when decoding starts."""
        kv = self.project_kv(enc)
        return KVCache(self.k_act.ahead(kv.k), self.v_act.ahead(kv.v), quantized=True)

    def __call__(self, x, kv=None, mask=None, cache=None, index=None, deterministic=True):
        """x: `[B, T, D]`; kv: cross-attention's encoder states `[B, S, D]`, or their
        `project_kv` when decoding; mask: boolean, broadcastable to `[B, H, T, S]`, True =
        attend; cache: self-attention buffers (`[B, H, L, Dh]`) that x's keys/values are written
        into at position `index` (int32 scalar), attending over all L. Returns (out `[B, T, D]`,
        probs `[B, H, T, S]`, the written cache or None)."""
        head_dim = self.d_model // self.num_heads
        q = self._heads(self.q_proj(x)) * jnp.asarray(head_dim**-0.5, self.dtype)
        keys = kv if isinstance(kv, KVCache) else self.project_kv(x if kv is None else kv)
        if cache is not None:  # decoding: attend over the earlier positions too
            keys = cache = cache.write(keys, index)
        k, v = keys.k, keys.v
        scores = self._product("bhtd,bhsd->bhts", q, k, self.q_act, self.k_act, keys.quantized).astype(jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1)  # [B, H, T, S], fp32
        p = self.attn_dropout(probs, deterministic=deterministic)
        out = self._product("bhts,bhsd->bthd", p.astype(self.dtype), v, self.p_act, self.v_act, keys.quantized)
        out = out.reshape(*out.shape[:2], self.d_model)  # [B, T, H, Dh] -> [B, T, D]
        return self.out_proj(out), probs, cache
