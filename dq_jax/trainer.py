"""One training stage (teacher fine-tuning or DQ distillation), run to completion.

The loop resumes from the stage's latest complete checkpoint (train state + data position),
evaluates on dev every `eval_every` steps or each epoch, keeps the best params by the dev
metric, logs to `metrics.jsonl` and shows a tqdm bar with loss and tokens/s. SIGTERM and
Ctrl-C stop it at the next step with a checkpoint saved.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
from tqdm import tqdm

from dq_jax import distributed, sharding, train_step
from dq_jax.checkpoint import StageCheckpoints
from dq_jax.evaluation import evaluate
from dq_jax.modeling import init_elastic
from dq_jax.quant_config import ELASTIC
from dq_jax.spec import TrainSettings
from dq_jax.stage import Stage
from dq_jax.stop_signals import StopRequests

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """SIGTERM or Ctrl-C: a checkpoint was saved; `signum` gives the exit status 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class StageResult:
    params: dict  # on the host: the best by the dev metric, or the final ones when no evaluation ran
    best: dict | None  # the best dev score, with the `step` it was reached at


def _optim(ts: TrainSettings, total: int) -> train_step.OptimConfig:
    return train_step.OptimConfig(learning_rate=ts.learning_rate, warmup_steps=int(ts.warmup_ratio * total),
                                  total_steps=total, weight_decay=ts.weight_decay, grad_clip=ts.grad_clip or None)


def _init_params(stage: Stage) -> dict:
    """The stage's initial params, with TBT's learned step sizes when the model has them.

    TBT initializes each step size from the first batch it quantizes; every process computes
    it from the same global batch, so they agree."""
    quant = stage.model.quant
    if quant is None or not quant.elastic or ELASTIC in stage.init_params:
        return stage.init_params
    first = next(stage.data.train_batches(stage.train, stage.seed))
    return init_elastic(stage.model, stage.init_params, first["input_ids"][0], first["attention_mask"][0],
                        first["decoder_input_ids"][0])


def train_stage(stage: Stage) -> StageResult:
    """Trains `stage` to completion, resuming from its checkpoints if it has any."""
    name, ts, ev, mesh = stage.name, stage.train, stage.eval, stage.mesh
    sharding.check_batch(ts.batch_size, mesh)
    rows = sharding.process_rows(mesh, ts.batch_size) if jax.process_count() > 1 else None
    it = stage.data.train_batches(ts, stage.seed, rows=rows)
    total = ts.steps or ts.epochs * it.steps_per_epoch
    if total <= 0:
        raise ValueError(f"Stage {name}: {len(stage.data.train.source)} training examples give no step at batch "
                         f"size {ts.batch_size} x {ts.grad_accum}; lower train.batch_size or add data.")
    init_params = _init_params(stage)
    tx = train_step.make_optimizer(_optim(ts, total), init_params)
    state, st_sh = train_step.init_state(init_params, tx, jax.random.PRNGKey(stage.seed), mesh)
    t_sh = teacher_params = None
    if stage.teacher is not None:
        t_sh = sharding.param_shardings(stage.teacher.params, mesh)
        teacher_params = jax.device_put(stage.teacher.params, t_sh)
    ckpts = StageCheckpoints(stage.checkpoint_dir)
    best = None
    if ckpts.latest_step() is not None:
        state, extra = ckpts.restore(state, st_sh)
        it.state, best = extra["data"], extra.get("best")
        log.info("%s: resumed from step %d (%s)", name, int(state.step), ckpts.latest.directory)
    teacher_model = stage.teacher.model if stage.teacher is not None else None
    step_fn = train_step.compile_step(train_step.make_train_step(stage.model, teacher_model, stage.distill, tx),
                                      mesh, st_sh, t_sh)
    start = int(state.step)
    eval_every = ts.eval_every or it.steps_per_epoch
    bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True, disable=not distributed.is_main())
    t_last = time.perf_counter()

    def check_finite(state):
        if int(state.first_bad_step) >= 0:
            ckpts.wait()
            raise NonFiniteLossError(
                f"Stage {name}: the loss or gradients became non-finite at step {int(state.first_bad_step) + 1}; "
                f"training stopped. The last good checkpoint is step {ckpts.latest_step()} in "
                f"{ckpts.latest.directory} (best params in {ckpts.best.directory}). Lower "
                f"train.learning_rate or set train.grad_clip, then rerun the same command to resume.")

    with StopRequests().installed() as stop:
        for step in range(start + 1, total + 1):
            state, m = step_fn(state, teacher_params, train_step.shard_batch(next(it), mesh, ts.batch_size))
            bar.update(1)
            if step % ts.log_every == 0 or step == total:
                m = jax.device_get(m)
                check_finite(state)
                dt = time.perf_counter() - t_last
                rate = float(m["tokens"]) * ts.log_every / max(dt, 1e-9)
                t_last = time.perf_counter()
                bar.set_postfix(loss=f"{float(m['loss']):.4f}", tok_s=f"{rate:.0f}")
                stage.metrics.write(stage=name, split="train", step=step, **{k: float(v) for k, v in m.items()})
            if step % eval_every == 0 or step == total:
                check_finite(state)  # never evaluate or keep a state that skipped a bad step
                score, _ = evaluate(stage.model, state.params, stage.data.dev, stage.data, ev, stage.tokenizer,
                                    desc=f"{name} dev")
                stage.metrics.write(stage=name, split="dev", step=step,
                                    **{k: v for k, v in score.items() if isinstance(v, float)})
                if best is None or score[ev.metric] > best[ev.metric]:
                    best = dict(score, step=step)
                    ckpts.save_best(step, state.params, best)
                log.info("%s step %d: dev %s %.2f (best %.2f at step %d)", name, step, ev.metric,
                         score[ev.metric], best[ev.metric], best["step"])
                ckpts.save(step, state, {"data": it.state, "best": best}, force=True)
            elif step % ts.checkpoint_every == 0 or stop:
                check_finite(state)
                ckpts.save(step, state, {"data": it.state, "best": best}, force=bool(stop))
            if stop:
                ckpts.wait()
                bar.close()
                raise Interrupted(f"Stage {name} stopped by {stop.name} at step {step}; checkpoint saved at step "
                                  f"{ckpts.latest_step()} in {ckpts.latest.directory}. Rerun the same command "
                                  "to resume.", stop.signum)
    bar.close()
    ckpts.wait()
    best_params = ckpts.restore_best(state.params, st_sh.params) if best is not None else state.params
    result = distributed.to_host(best_params)
    ckpts.close()
    return StageResult(result, best)
