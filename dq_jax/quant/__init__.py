"""Quantization: what a student quantizes (`config`), the one policy that says how each tensor is
quantized (`policy`), the quantizer families (`dq_bart`; TBT's `tbt_weights` and `elastic_activations`
activations) over their shared machinery (`grouped`), every weight quantizer by kind
(`registry`), integer codes (`codes`) and bit packing (`packing`).

The quantizers are also importable from here (`quant.symmetric(x, bits)`, `quant.ternary`, ...);
they resolve on first use, so numpy-only readers of packed files can import `dq_jax.quant.packing`
and `dq_jax.quant.config` without JAX.
"""

import importlib

_FAMILIES = {
    "dq_bart": (
        "symmetric",
        "ternary",
        "binary",
        "mse",
        "activation",
        "symmetric_codes",
        "ternary_codes",
        "binary_codes",
        "mse_codes",
        "dequantize",
        "ste_clip",
    ),
    "tbt_weights": ("tbt_ternary", "tbt_binary", "tbt_ternary_codes", "tbt_binary_codes"),
    "elastic_activations": ("elastic", "elastic_init", "elastic_levels", "elastic_codes"),
    "packing": ("pack", "unpack", "packed_nbytes"),
    "codes": ("Codes",),
}
_PUBLIC = {name: f"dq_jax.quant.{module}" for module, names in _FAMILIES.items() for name in names}


__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dq_jax.quant' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted([*globals(), *_PUBLIC])
