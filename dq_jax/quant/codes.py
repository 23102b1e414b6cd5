"""`Codes`: a quantized tensor as integer codes and the scales that map them back to reals.

The typed value every `quant.*_codes` function returns and `quant.dequantize` takes (like
qwix's `QArray`). `values * scales (+ offset)` is the fake-quantized tensor, bit for bit, so
codes exported or multiplied directly reproduce training exactly. Only TBT's unsigned elastic
activations have an offset (their minimum); every other quantizer here is symmetric.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Codes:
    """``values [*shape]`` int8 integer codes, ``scales`` float32 of the keepdims shape of the
    reduction (1 along ``axes``, the tensor's size elsewhere), so ``values * scales``
    broadcasts. ``bits``: the code width (ternary codes are 2-bit, binary 1-bit). ``axes``:
    the axes each scale reduces over, sorted; all of them for one scale per tensor. Both are
    static (pytree metadata): jit specializes on them, not on the arrays. ``offset``: None, or
    float32 of the scales' shape added after scaling."""

    values: jax.Array
    scales: jax.Array
    bits: int = dataclasses.field(metadata=dict(static=True))
    axes: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    offset: jax.Array | None = None

    @property
    def bound(self) -> int:
        """An upper bound of ``|values|``: ``2**(bits-1)`` (symmetric codes reach ``2**(bits-1)-1``,
        ternary and signed elastic 1, unsigned 2-bit elastic 2)."""
        return 2 ** (self.bits - 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def granularity(self) -> str:
        """``tensor`` (one scale), ``row`` (one per index of every axis but the reduced last
        one, e.g. embedding rows) or ``axes<...>`` for any other grouping."""
        ndim = len(self.shape)
        if len(self.axes) == ndim:
            return "tensor"
        if self.axes == (ndim - 1,):
            return "row"
        return "axes" + "".join(str(a) for a in self.axes)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """``values * scales (+ offset)`` in float32, cast to ``dtype``."""
        q = self.values.astype(jnp.float32) * self.scales
        return (q if self.offset is None else q + self.offset).astype(dtype)
