"""dq-jax: distillation-aware quantization of BART/mBART in JAX/Flax.

The public names resolve on first use, so `import dq_jax` loads nothing heavy:
`from dq_jax import hf, modeling, quant, distill`, and `dq_jax.QuantConfig`, `dq_jax.ModelConfig`.
"""

import importlib

_PUBLIC = {
    "hf": ("dq_jax.model.hf", None),
    "modeling": ("dq_jax.model.modeling", None),
    "distill": ("dq_jax.training.distill", None),
    "QuantConfig": ("dq_jax.quant.config", "QuantConfig"),
    "ModelConfig": ("dq_jax.model.config", "ModelConfig"),
}


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dq_jax' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)


def __dir__():
    return sorted([*globals(), *_PUBLIC])
