"""Rematerialization (`train.remat`): which activations of a layer the backward pass keeps.

`none` keeps every intermediate the backward needs (fastest, most memory). `full` keeps only
each layer's inputs and outputs and recomputes the layer in the backward (about one extra
forward of the layers; the least memory). `dots` keeps the outputs of the matmuls that have no
batch dimension and recomputes the rest.

Why `dots` is `dots_with_no_batch_dims_saveable` (checked with
`jax.ad_checkpoint.print_saved_residuals` on a 2-2-8 layer, tests/test_remat.py): every
projection and FFN matmul is `einsum("...i,io->...o")`, a `dot_general` that contracts `i` and
has no batch dimension, so their outputs `[B, T, D]` and `[B, T, F]` are saved. Attention's
`bhtd,bhsd->bhts` and `bhts,bhsd->bthd` batch over (b, h), so its `[B, H, T, S]` scores are
recomputed: they are the largest activations at long lengths and the cheapest products to
redo. `checkpoint_dots` would save those scores too, i.e. save almost what `none` saves.
What `dots` never saves are the cheap elementwise results between the matmuls (quantizers,
GELU, layer norms, softmax, dropout), which are recomputed from the saved matmul outputs.
On codes (`quant.compute="codes"`) the int8 x int8 -> int32 products are dot_generals too.

On CPU, remat needs one XLA option (`compiler_options`; `train_step.compile_step` passes it).
`jax.checkpoint` keeps XLA from merging the backward's recomputation with the forward by
putting the recomputation's inputs through an `optimization_barrier`. XLA's CPU pipeline
removes these barriers (its `cse_barrier_expander` pass) before its later CSE runs, so the
recomputation is merged back and `full` keeps as much as `none` (measured: the gradient of a
2-2-8 BART-base 6-3 student's loss at batch 8 x (256 + 64) has 2.4 GiB of temporaries either
way). With that pass disabled, `full` needs 0.5 GiB there (and `none` 2.5). GPU and TPU keep
the barriers, so they need no option.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

REMAT = ("none", "full", "dots")

# jax.checkpoint policies; `none` means no checkpointing at all (not a policy that saves all).
POLICIES: dict[str, Callable | None] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# The XLA CPU pass that drops `optimization_barrier`s, which are what make remat work.
CPU_BARRIER_PASS = "cse_barrier_expander"


def compiler_options(name: str, backend: str | None = None) -> dict[str, str]:
    """XLA compiler options a jitted step whose model uses remat `name` needs on `backend`
    (default: JAX's default backend): on CPU with remat, keep the barriers; otherwise none."""
    if name == "none" or (backend or jax.default_backend()) != "cpu":
        return {}
    return {"xla_disable_hlo_passes": CPU_BARRIER_PASS}


def checkpointed(name: str, fn: Callable) -> Callable:
    """`fn(module, *arrays)` under remat `name` (`fn` itself for `none`), as Linen's lifted
    `nn.remat` of a function: the module's variables keep their names, so params load the same
    either way. Python values such as `deterministic` are not arguments: `fn` closes over them,
    so they stay static without positional bookkeeping.
    `prevent_cse=True`: the layers are not under a `scan` over layers (only the micro-batch scan,
    whose body holds forward and backward together), so without it XLA could merge the
    recomputation with the forward and keep the activations after all."""
    if name == "none":
        return fn
    return nn.remat(fn, policy=POLICIES[name], prevent_cse=True)
