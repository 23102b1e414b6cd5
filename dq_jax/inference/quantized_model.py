"""A student with its weights quantized once, resident as integer codes, for evaluation and
generation: `quantized_student(cfg, quant, params)` gives the model and a params tree whose
quantized weights are `Codes` (int8 values and fp32 scales) instead of fp32 master weights.

Training re-quantizes the master weights at every step (they change); a fixed student does not
need to, and keeping the codes instead of fp32 weights is what makes it small in memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dq_jax.model.config import ModelConfig
from dq_jax.model.hf_layout import untie_lm_head
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.quant.codes import Codes
from dq_jax.quant.config import QuantConfig
from dq_jax.quant.policy import quantize_tree


def quantized_student(cfg: ModelConfig, quant: QuantConfig, params: dict, dtype=jnp.float32) -> tuple[Seq2SeqLM, dict]:
    """(model computing in `dtype`, params with `Codes` weights). Its outputs equal
    `Seq2SeqLM(cfg, quant, dtype=dtype)` on the master `params` in either compute mode: the same
    codes, computed once."""
    cfg, params = untie_lm_head(cfg, params, quant)  # an fp32 head stays fp32; the table becomes codes
    return Seq2SeqLM(cfg, quant, dtype=dtype), float_kernels_in(_quantize_tree(params, quant), dtype)


def float_kernels_in(params: dict, dtype) -> dict:
    """`params` with every float matmul kernel (one that is not `Codes`: an unquantized LM head,
    full-precision layers) held in the compute `dtype`. A bf16 model casts each such kernel to
    bf16 at every product (`precision.einsum`); casting once instead gives the same products
    bit for bit, and a decode step then reads half the bytes (the fp32 LM head is most of what
    a step streams). Biases, norms and embedding tables, which do not enter a bf16 product
    whole, stay as they are."""
    if jnp.dtype(dtype) == jnp.float32:
        return params

    def cast(path, leaf):
        if isinstance(leaf, Codes) or getattr(path[-1], "key", None) != "kernel":
            return leaf
        return jnp.asarray(leaf, dtype)

    return jax.tree_util.tree_map_with_path(cast, params, is_leaf=lambda x: isinstance(x, Codes))


# compiled once per (tree structure, QuantConfig): every evaluation of a run reuses it
_quantize_tree = jax.jit(quantize_tree, static_argnums=1)


def resident_bytes(params: dict) -> int:
    """Bytes the weights occupy: codes at their int8 container, scales and every other tensor
    at their own dtype."""
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, Codes))
    return sum(x.values.nbytes + x.scales.nbytes if isinstance(x, Codes) else np.asarray(x).nbytes for x in leaves)
