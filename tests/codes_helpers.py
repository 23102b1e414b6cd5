"""What the `quant.compute="codes"` tests (test_codes_*) share: the compile options and the
norm-wise relative differences they compare fake and codes mode with."""

import jax
import numpy as np

# LLVM at -O0 halves XLA:CPU's compile time, which dominates these tests. Both sides of every
# comparison are compiled alike; generation and the sharded train step run at the default level.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _rel(a, b) -> float:
    """Norm-wise relative difference ||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _tree_rel(a, b) -> float:
    """Global-norm relative difference of two pytrees of arrays."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)) for x, y in zip(la, lb))
    den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in lb)
    return (num / den) ** 0.5
