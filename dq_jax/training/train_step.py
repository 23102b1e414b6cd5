"""The DQ train step: a pure `(state, teacher_params, batch) -> (state, metrics)`.

Batches carry a leading gradient-accumulation axis: every array is `[A, B, L]`; the step
scans over the A micro-batches, runs the frozen teacher once per micro-batch, averages the
gradients and applies one AdamW update. A step whose loss or gradients are not finite leaves
params and optimizer state untouched and is recorded in the state, so the training loop can
stop naming it while the last good state is still there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dq_jax.model import remat
from dq_jax.model.modeling import Seq2SeqLM, variables
from dq_jax.parallel import sharding
from dq_jax.quant.policy import classify, key_names
from dq_jax.training import distill
from dq_jax.training.stage import TrainSettings

BATCH_KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: steps taken, including skipped ones
    params: Any  # fp32 master weights of the student
    opt_state: Any
    rng: jax.Array  # raw uint32 key data (checkpointable); each step folds in its step number
    first_bad_step: jax.Array  # int32: first step with a non-finite loss or gradient, -1 if none


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 3e-5
    warmup_steps: int = 0
    total_steps: int = 1000
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    grad_clip: float | None = None  # global-norm clipping; None = off (the reference)

    @classmethod
    def of(cls, ts: TrainSettings, total: int) -> OptimConfig:
        """A stage's optimizer: its settings over `total` steps, warm-up as a share of them."""
        return cls(
            learning_rate=ts.learning_rate,
            warmup_steps=int(ts.warmup_ratio * total),
            total_steps=total,
            weight_decay=ts.weight_decay,
            grad_clip=ts.grad_clip or None,
        )

    def schedule(self) -> optax.Schedule:
        """Linear warm-up from 0, then linear decay to 0 at `total_steps` (HF's schedule)."""
        warm = max(int(self.warmup_steps), 0)
        decay = optax.linear_schedule(self.learning_rate, 0.0, max(self.total_steps - warm, 1))
        if warm == 0:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, self.learning_rate, warm), decay], [warm])


def _param_infos(params) -> Any:
    return jax.tree_util.tree_map_with_path(lambda kp, leaf: classify(key_names(kp), np.ndim(leaf)), params)


def _labels(params) -> Any:
    """'frozen' for what is never trained (final_logits_bias, a buffer in HF), else 'train'."""
    return jax.tree.map(lambda info: "train" if info.trainable else "frozen", _param_infos(params))


def _decay_mask(params) -> Any:
    """Weight decay on kernels and embeddings only, not on biases, layer norms or activation step sizes."""
    return jax.tree.map(lambda info: info.decays, _param_infos(params))


def make_optimizer(cfg: OptimConfig, params) -> optax.GradientTransformation:
    adamw = optax.adamw(
        cfg.schedule(), cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask(params)
    )
    if cfg.grad_clip:
        adamw = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, _labels(params))


def _forward(
    model: Seq2SeqLM, params, mb: dict, with_dec_mask: bool, need_internals: bool, deterministic: bool, rng=None
):
    return model.apply(
        variables(params),
        mb["input_ids"],
        mb["attention_mask"],
        mb["decoder_input_ids"],
        mb["decoder_attention_mask"] if with_dec_mask else None,
        output_hidden_states=need_internals,
        output_attentions=need_internals,
        deterministic=deterministic,
        rngs=None if rng is None else {"dropout": rng},
    )


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """`fn(state, teacher_params, batch) -> (state, metrics)`, not yet jitted, and the XLA options
    its student's remat needs when it is compiled (`dq_jax.model.remat.compiler_options`)."""

    fn: Callable
    compiler_options: dict[str, str]

    def __call__(self, state, teacher_params, batch: dict):
        return self.fn(state, teacher_params, batch)


def make_train_step(
    student: Seq2SeqLM, teacher: Seq2SeqLM | None, dcfg: distill.DistillConfig, tx: optax.GradientTransformation
) -> TrainStep:
    """The step of `student` against `teacher` (None: the task loss alone) with optimizer `tx`."""
    use_teacher = teacher is not None and dcfg.uses_teacher
    # The reference feeds no decoder padding mask; right padding never reaches real tokens
    # through the causal mask, but padded positions enter the unmasked dq_bart terms.
    dec_mask = dcfg.mode == "masked"

    def loss_fn(params, mb, t_out, rng):
        s_out = _forward(student, params, mb, dec_mask, use_teacher, False, rng)
        return distill.distill_loss(s_out, t_out, mb, dcfg)

    def step(state: TrainState, teacher_params, batch: dict):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        accum = batch["input_ids"].shape[0]

        def micro(grads, xs):
            mb, i = xs
            t_out = None
            if use_teacher:
                t_out = jax.lax.stop_gradient(_forward(teacher, teacher_params, mb, dec_mask, True, True))
            (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, mb, t_out, jax.random.fold_in(rng, i)
            )
            return jax.tree.map(jnp.add, grads, g), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, metrics = jax.lax.scan(micro, zeros, ({k: batch[k] for k in BATCH_KEYS}, jnp.arange(accum)))
        grads = jax.tree.map(lambda g: g / accum, grads)
        metrics = jax.tree.map(jnp.mean, metrics)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

        def update(_):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state

        # A step with a non-finite loss or gradient leaves params and optimizer state as they
        # were. A branch, not a select of old and new: the update then runs in place in the
        # donated buffers, where a select keeps both and copies every parameter and moment.
        params, opt_state = jax.lax.cond(ok, update, lambda _: (state.params, state.opt_state), None)
        first_bad = jnp.where((state.first_bad_step < 0) & ~ok, state.step, state.first_bad_step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, first_bad_step=first_bad)
        metrics = dict(
            metrics,
            grad_norm=grad_norm,
            finite=ok.astype(jnp.float32),
            tokens=jnp.sum(batch["decoder_attention_mask"]).astype(jnp.float32),
        )
        return new_state, metrics

    return TrainStep(step, remat.compiler_options(student.remat))


def init_state(params, tx: optax.GradientTransformation, rng: jax.Array, mesh: Mesh):
    """Places params on the mesh and creates the optimizer state directly sharded.

    Returns `(state, state_shardings)`."""
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    shapes = jax.eval_shape(lambda p: p, params)
    p_sh = sharding.param_shardings(shapes, mesh)
    params = jax.device_put(params, p_sh)
    abstract = jax.eval_shape(lambda p, r: TrainState(jnp.int32(0), p, tx.init(p), r, jnp.int32(-1)), shapes, rng)
    st_sh = sharding.state_shardings(abstract, shapes, mesh)
    state = jax.jit(lambda p, r: TrainState(jnp.int32(0), p, tx.init(p), r, jnp.int32(-1)), out_shardings=st_sh)(
        params, rng
    )
    return state, st_sh


def batch_shardings(mesh: Mesh) -> dict:
    return {k: sharding.batch_sharding(mesh, 3, leading=1) for k in BATCH_KEYS}


def compile_step(step: TrainStep, mesh: Mesh, state_sh, teacher_sh) -> Callable:
    """`step` jitted with explicit in/out shardings and its compiler options; the old state is
    donated."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step.fn,
        in_shardings=(state_sh, teacher_sh, batch_shardings(mesh)),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
        compiler_options=step.compiler_options or None,
    )


def shard_batch(batch: dict, mesh: Mesh, global_batch_size: int | None = None) -> dict:
    """Host numpy batch `[A, B, L]` -> global device arrays sharded over data x fsdp.

    With several processes, `batch` holds this process's rows only (`sharding.process_rows`)
    and `global_batch_size` is B of the global batch."""
    size = global_batch_size or batch["input_ids"].shape[1]
    if jax.process_count() == 1:
        return {k: jax.device_put(batch[k], s) for k, s in batch_shardings(mesh).items()}
    return {
        k: jax.make_array_from_process_local_data(s, batch[k], (batch[k].shape[0], size, *batch[k].shape[2:]))
        for k, s in batch_shardings(mesh).items()
    }
