"""dq-jax: distillation-aware quantization of BART/mBART in JAX/Flax."""
