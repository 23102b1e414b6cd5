"""The decoder's KV cache, one layout from `layers.Attention` through `modeling` to `generate`.

Keys and values are head-major, `[B, H, L, Dh]`, so that decoding reads them in the layout the
attention matmuls want instead of transposing them every step.
"""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class KVCache:
    """Projected keys and values of one attention layer: `k`, `v` `[B, H, L, Dh]`.

    `quantized`: `k` and `v` already went through the attention's key/value activation
    quantizers (fake-quantized values, or `Codes` when products run on codes): cross-attention
    quantizes its fixed keys and values once per decode, not once per step."""

    k: Any  # jax.Array, or Codes when quantized on codes
    v: Any
    quantized: bool = flax.struct.field(pytree_node=False, default=False)

    def write(self, new: KVCache, index: jax.Array) -> KVCache:
        """These buffers with `new` (`[B, H, T, Dh]`) written at positions index .. index+T-1."""
        at = (0, 0, index, 0)
        return KVCache(
            jax.lax.dynamic_update_slice(self.k, new.k.astype(self.k.dtype), at),
            jax.lax.dynamic_update_slice(self.v, new.v.astype(self.v.dtype), at),
        )


@flax.struct.dataclass
class DecoderCache:
    """What incremental decoding keeps between steps, one entry per decoder layer.

    index: int32 scalar, the number of positions already written (the next one's position).
    self_attn: self-attention buffers `[B, H, max_length, Dh]`, valid up to `index`.
    cross_attn: the projected encoder states `[B, H, S, Dh]`. They never change while decoding,
        so a decoding loop carries `replace(cross_attn=())` and puts them back for each step.
    """

    index: jax.Array
    self_attn: tuple[KVCache, ...]
    cross_attn: tuple[KVCache, ...]

    @property
    def max_length(self) -> int:
        return self.self_attn[0].k.shape[2]
