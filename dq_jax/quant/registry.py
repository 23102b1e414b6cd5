"""Every weight quantizer by kind, as the pair `(fake, codes)` the policy calls.

Both take one signature, `fn(w, bits, clip, reduce_axes, steps)`, whatever the family reads of
it: DQ-BART's symmetric and MSE quantizers use the bits (MSE the refinement steps too), its
ternary and binary ones only the clip, and TBT's never clip. `fake` returns the fake-quantized
tensor with the family's straight-through gradient, `codes` its `Codes`.
"""

from __future__ import annotations

from collections.abc import Callable

from dq_jax.quant import dq_bart, tbt_weights
from dq_jax.quant.codes import Codes
from dq_jax.quant.grouped import Axes

Fake = Callable[..., object]  # (w, bits, clip, reduce_axes, steps) -> fake-quantized w
CodesOf = Callable[..., Codes]  # (w, bits, clip, reduce_axes, steps) -> Codes


def _symmetric(w, bits: int, clip: float, axes: Axes, steps: int):
    return dq_bart.symmetric(w, bits, clip, axes)


def _symmetric_codes(w, bits: int, clip: float, axes: Axes, steps: int) -> Codes:
    return dq_bart.symmetric_codes(w, bits, clip, axes)


def _mse(w, bits: int, clip: float, axes: Axes, steps: int):
    return dq_bart.mse(w, bits, clip, axes, steps)


def _mse_codes(w, bits: int, clip: float, axes: Axes, steps: int) -> Codes:
    return dq_bart.mse_codes(w, bits, clip, axes, steps)


def _ternary(w, bits: int, clip: float, axes: Axes, steps: int):
    return dq_bart.ternary(w, clip, axes)


def _ternary_codes(w, bits: int, clip: float, axes: Axes, steps: int) -> Codes:
    return dq_bart.ternary_codes(w, clip, axes)


def _binary(w, bits: int, clip: float, axes: Axes, steps: int):
    return dq_bart.binary(w, clip, axes)


def _binary_codes(w, bits: int, clip: float, axes: Axes, steps: int) -> Codes:
    return dq_bart.binary_codes(w, clip, axes)


def _tbt_ternary(w, bits: int, clip: float, axes: Axes, steps: int):
    return tbt_weights.tbt_ternary(w, axes)


def _tbt_ternary_codes(w, bits: int, clip: float, axes: Axes, steps: int) -> Codes:
    return tbt_weights.tbt_ternary_codes(w, axes)


def _tbt_binary(w, bits: int, clip: float, axes: Axes, steps: int):
    return tbt_weights.tbt_binary(w, axes)


def _tbt_binary_codes(w, bits: int, clip: float, axes: Axes, steps: int) -> Codes:
    return tbt_weights.tbt_binary_codes(w, axes)


WEIGHTS: dict[str, tuple[Fake, CodesOf]] = {
    "symmetric": (_symmetric, _symmetric_codes),
    "mse": (_mse, _mse_codes),
    "ternary": (_ternary, _ternary_codes),
    "binary": (_binary, _binary_codes),
    "tbt_ternary": (_tbt_ternary, _tbt_ternary_codes),
    "tbt_binary": (_tbt_binary, _tbt_binary_codes),
}
