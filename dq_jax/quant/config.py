"""What a student quantizes: a frozen, validated `QuantConfig` (bits and quantizer choices).

How each tensor is then quantized is decided by `dq_jax.quant.policy` from this config. No JAX here:
numpy-only code reads it from packed files.
"""

from __future__ import annotations

import dataclasses

WEIGHT_METHODS = ("dq_bart", "symmetric", "binary", "mse", "tbt")
ELASTIC = "elastic"  # Flax collection of the learned activation step sizes (TBT)
GRANULARITIES = ("tensor", "row")
ACT_SCALES = ("tensor", "example")
COMPUTE = ("fake", "codes")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Bits and quantizer choices of a student; `None` bits mean full precision.

    `method` picks the weight quantizer by bit-width: `dq_bart` (the reference: 2 bits ->
    ternary TWN, 1 bit -> binary BWN, otherwise symmetric), `symmetric` (2..8), `binary`
    (1 bit only), `mse` (symmetric levels, MSE-optimal scale, 2..8) or `tbt` (Liu et al. 2023:
    statistics-based ternary at 2 bits, binary at 1 bit, one scale per output row, no clip).
    Activations at 3..8 bits are symmetric with a dynamic scale: `act_scale="tensor"` is the
    reference's one scale for the whole batch tensor, `"example"` one scale per example so an
    example's output does not depend on what else is in its batch. With `method="tbt"`, 1- and
    2-bit activations are elastic: a learned step size per quantizer, in the `elastic`
    collection (`act_scale="example"` then takes the unsigned quantizers' minimum per example).

    `compute`: how a product of two quantized operands is computed. `fake` dequantizes both and
    multiplies in float (the reference). `codes` multiplies their integer codes exactly and
    scales the result (`dq_jax.model.codes_matmul`); gradients are the same straight-through ones.
    `codes` is the default, here and for every run and loaded student: it is the faster one
    wherever measured (XLA:CPU's int8 dots beat its fp32 ones with VNNI, far more with AMX).
    """

    weight_bits: int | None = None
    embed_bits: int | None = None
    act_bits: int | None = None
    method: str = "dq_bart"
    weight_granularity: str = "tensor"  # embeddings are always quantized per row
    weight_clip: float = 2.5
    act_clip: float = 2.5
    act_scale: str = "tensor"
    quantize_lm_head: bool = False
    mse_steps: int = 5
    compute: str = "codes"

    def __post_init__(self):
        if self.method not in WEIGHT_METHODS:
            raise ValueError(f"quant.method={self.method!r} is not supported; choose one of {WEIGHT_METHODS}.")
        for name in ("weight_bits", "embed_bits"):
            _check_weight_bits(name, getattr(self, name), self.method)
        low = 1 if self.method == "tbt" else 2
        if self.act_bits is not None and not (
            isinstance(self.act_bits, int) and not isinstance(self.act_bits, bool) and low <= self.act_bits <= 8
        ):
            hint = "" if low == 1 else "; 1-bit activations need quant.method='tbt'"
            raise ValueError(
                f"quant.act_bits={self.act_bits!r} has no activation quantizer with quant.method={self.method!r}; "
                f"use an integer in {low}..8 or None (full-precision activations){hint}."
            )
        if self.weight_granularity not in GRANULARITIES:
            raise ValueError(f"quant.weight_granularity={self.weight_granularity!r}; choose one of {GRANULARITIES}.")
        if self.compute not in COMPUTE:
            raise ValueError(f"quant.compute={self.compute!r}; choose one of {COMPUTE}.")
        if self.act_scale not in ACT_SCALES:
            raise ValueError(f"quant.act_scale={self.act_scale!r}; choose one of {ACT_SCALES}.")
        for name in ("weight_clip", "act_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"quant.{name} must be positive, got {getattr(self, name)!r}.")
        if self.quantize_lm_head and self.embed_bits is None:
            raise ValueError("quant.quantize_lm_head=True needs quant.embed_bits to be set.")

    @property
    def enabled(self) -> bool:
        return any(b is not None for b in (self.weight_bits, self.embed_bits, self.act_bits))

    @property
    def elastic(self) -> bool:
        """True when activations use learned step sizes (TBT at 1 or 2 bits)."""
        return self.method == "tbt" and self.act_bits is not None and self.act_bits <= 2

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        """From `dataclasses.asdict` output, as packed files and `dq_jax.json` store it. An
        `embed_granularity` key (always "row": embeddings are quantized per row) is accepted."""
        d = dict(d)
        if d.pop("embed_granularity", "row") != "row":
            raise ValueError("quant_config.embed_granularity must be 'row'; embeddings are quantized per row.")
        return cls(**d)


def split_elastic(params: dict) -> tuple[dict, dict | None]:
    """A student's trainable tree -> (weights, learned activation step sizes or None).

    Trainers, checkpoints and optimizers hold one tree; the step sizes of elastic (TBT)
    activation quantizers ride in it under the `elastic` key and are their own Flax collection."""
    if ELASTIC not in params:
        return params, None
    return {k: v for k, v in params.items() if k != ELASTIC}, params[ELASTIC]


def _check_weight_bits(name: str, bits, method: str) -> None:
    if bits is None:
        return
    allowed = {"dq_bart": range(1, 9), "symmetric": range(2, 9), "mse": range(2, 9), "binary": (1,), "tbt": (1, 2)}[
        method
    ]
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in allowed:
        raise ValueError(
            f"quant.{name}={bits!r} is not supported by quant.method={method!r}; allowed bits: "
            f"{list(allowed)} (or None for full precision)."
        )
