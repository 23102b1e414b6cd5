"""One training stage (teacher fine-tuning or DQ distillation), run to completion.

The loop resumes from the stage's latest complete checkpoint (train state + data position),
evaluates on dev every `eval_every` steps or each epoch, keeps the best params by the dev
metric, logs losses, learning rate and throughput (`dq_jax.training.metrics_log`, `dq_jax.training.throughput`)
and shows a tqdm bar with loss and tokens/s. `train.profile_steps` traces chosen steps.
SIGTERM and Ctrl-C stop it at the next step with a checkpoint saved.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm

from dq_jax.inference.evaluation import evaluate
from dq_jax.model.modeling import init_elastic
from dq_jax.parallel import distributed, sharding
from dq_jax.quant.config import ELASTIC
from dq_jax.training import train_step
from dq_jax.training.checkpoint import StageCheckpoints
from dq_jax.training.metrics_log import Record
from dq_jax.training.stage import Stage
from dq_jax.training.throughput import StepFlops, StepTimer, Throughput, device_peak
from dq_jax.utils.stop_signals import StopRequests

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


class _Profiler:
    """A `jax.profiler` trace of steps START..END (`train.profile_steps`) in DIR/profile/<stage>/,
    for TensorBoard's profile plugin or Perfetto (`perfetto_trace.json.gz`). Steps run
    asynchronously, so it waits for step START - 1 before starting and for step END before
    stopping: the trace holds those steps and no others. A stage resumed past START traces
    nothing (part of the window would mislead)."""

    def __init__(self, steps: tuple[int, int] | None, directory: str, first: int, total: int):
        self.directory, self.window, self.tracing = directory, None, False
        if steps:
            start, end = steps
            if first <= start <= total:
                self.window = (start, min(end, total))
            else:
                log.warning(
                    "train.profile_steps=%d,%d: steps %d..%d of this stage run, no trace.", start, end, first, total
                )

    def before(self, step: int, state) -> float:
        """Call before running `step` with the state of the one before; returns the seconds spent
        starting a trace (not training time)."""
        if not (self.window and step == self.window[0]):
            return 0.0
        jax.block_until_ready(state)
        t = time.perf_counter()
        jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
        self.tracing = True
        return time.perf_counter() - t

    def after(self, step: int, state) -> float:
        """Call with the state `step` returned; returns the seconds spent writing a trace."""
        if not (self.tracing and step == self.window[1]):
            return 0.0
        jax.block_until_ready(state)
        t = time.perf_counter()
        self.stop()
        log.info("Trace of steps %d..%d in %s", *self.window, self.directory)
        return time.perf_counter() - t

    def stop(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False


def _precision(stage: Stage) -> str:
    return "bf16" if jnp.dtype(stage.model.dtype) == jnp.bfloat16 else "fp32"


def _init_params(stage: Stage) -> dict:
    """The stage's initial params, with TBT's learned step sizes when the model has them.

    TBT initializes each step size from the first batch it quantizes; every process computes
    it from the same global batch, so they agree."""
    quant = stage.model.quant
    if quant is None or not quant.elastic or ELASTIC in stage.init_params:
        return stage.init_params
    first = next(stage.data.train_batches(stage.train, stage.seed))
    return init_elastic(
        stage.model, stage.init_params, first["input_ids"][0], first["attention_mask"][0], first["decoder_input_ids"][0]
    )


def train_stage(stage: Stage) -> StageResult:
    """Trains `stage` to completion, resuming from its checkpoints if it has any."""
    name, ts, ev, mesh = stage.name, stage.train, stage.eval, stage.mesh
    sharding.check_batch(ts.batch_size, mesh)
    rows = sharding.process_rows(mesh, ts.batch_size) if jax.process_count() > 1 else None
    it = stage.data.train_batches(ts, stage.seed, rows=rows)
    total = ts.steps or ts.epochs * it.steps_per_epoch
    if total <= 0:
        raise ValueError(
            f"Stage {name}: {len(stage.data.train.source)} training examples give no step at batch "
            f"size {ts.batch_size} x {ts.grad_accum}; lower train.batch_size or add data."
        )
    init_params = _init_params(stage)
    optim = train_step.OptimConfig.of(ts, total)
    tx = train_step.make_optimizer(optim, init_params)
    learning_rate = optim.schedule()  # of the update count: step s applies learning_rate(s - 1)
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
    step_fn = train_step.compile_step(
        train_step.make_train_step(stage.model, teacher_model, stage.distill, tx), mesh, st_sh, t_sh
    )
    start = int(state.step)
    stage.metrics.resume(name, start)  # what a killed run logged after `start` goes
    eval_every = ts.eval_every or it.steps_per_epoch
    bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True, disable=not distributed.is_main())
    flops, peak = StepFlops(step_fn), None
    if stage.metrics.enabled:  # throughput is for the log only: the other processes skip it
        peak = device_peak(
            _precision(stage), ts.peak_tflops, [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        )
        log.info("%s: MFU against %.4g TFLOP/s per device (%s)", name, peak.tflops, peak.source)
    profiler = _Profiler(ts.profile_steps, os.path.join(stage.workdir, "profile", name), start + 1, total)
    timer = StepTimer()

    def check_finite(state):
        if int(state.first_bad_step) >= 0:
            ckpts.wait()
            raise NonFiniteLossError(
                f"Stage {name}: the loss or gradients became non-finite at step {int(state.first_bad_step) + 1}; "
                f"training stopped. The last good checkpoint is step {ckpts.latest_step()} in "
                f"{ckpts.latest.directory} (best params in {ckpts.best.directory}). Lower "
                f"train.learning_rate or set train.grad_clip, then rerun the same command to resume."
            )

    with StopRequests().installed() as stop:
        try:
            for step in range(start + 1, total + 1):
                host = next(it)
                batch = train_step.shard_batch(host, mesh, ts.batch_size)
                timer.exclude(profiler.before(step, state))
                state, m = step_fn(state, teacher_params, batch)
                timer.exclude(profiler.after(step, state))
                # target tokens of the global batch (a process holds B_local of its B rows)
                timer.add(
                    float(host["decoder_attention_mask"].sum()) * ts.batch_size / host["input_ids"].shape[1], batch
                )
                if step == start + 1:  # this call compiled the step: time from the end of its run
                    jax.block_until_ready(state)
                    timer.restart()
                bar.update(1)
                if step % ts.log_every == 0 or step == total:
                    m = jax.device_get(m)
                    seconds = timer.seconds()
                    check_finite(state)
                    values = {k: float(v) for k, v in m.items()}
                    values["learning_rate"] = float(learning_rate(step - 1))
                    if peak is not None and timer.steps:
                        window = sum(n * flops(state, teacher_params, b) for n, b in timer.batches())
                        speed = Throughput.of(seconds, timer.steps, timer.tokens, window, mesh.devices.size, peak)
                        values.update(speed.scalars())
                        bar.set_postfix(
                            loss=f"{values['loss']:.4f}", tok_s=f"{speed.tokens_per_s:.0f}", mfu=f"{speed.mfu:.1%}"
                        )
                    stage.metrics.write(Record(name, "train", values, step=step))
                    timer.restart()
                if step % eval_every == 0 or step == total:
                    check_finite(state)  # never evaluate or keep a state that skipped a bad step
                    score, _ = evaluate(
                        stage.model,
                        state.params,
                        stage.data.dev,
                        stage.data.batching,
                        ev,
                        stage.tokenizer,
                        desc=f"{name} dev",
                    )
                    stage.metrics.write(
                        Record(name, "dev", {k: v for k, v in score.items() if isinstance(v, float)}, step=step)
                    )
                    if best is None or score[ev.metric] > best[ev.metric]:
                        best = dict(score, step=step)
                        ckpts.save_best(step, state.params, best)
                    log.info(
                        "%s step %d: dev %s %.2f (best %.2f at step %d)",
                        name,
                        step,
                        ev.metric,
                        score[ev.metric],
                        best[ev.metric],
                        best["step"],
                    )
                    ckpts.save(step, state, {"data": it.state, "best": best}, force=True)
                    timer.restart()  # evaluation is not training time
                elif step % ts.checkpoint_every == 0 or stop:
                    check_finite(state)
                    ckpts.save(step, state, {"data": it.state, "best": best}, force=bool(stop))
                if stop:
                    ckpts.wait()
                    bar.close()
                    raise Interrupted(
                        f"Stage {name} stopped by {stop.name} at step {step}; checkpoint saved at step "
                        f"{ckpts.latest_step()} in {ckpts.latest.directory}. Rerun the same command "
                        "to resume.",
                        stop.signum,
                    )
        finally:
            profiler.stop()
    bar.close()
    ckpts.wait()
    best_params = ckpts.restore_best(state.params, st_sh.params) if best is not None else state.params
    result = distributed.to_host(best_params)
    ckpts.close()
    return StageResult(result, best)
