"""One training stage (teacher fine-tuning or DQ distillation) and dev/test evaluation.

The loop resumes from the stage's latest complete checkpoint (train state + data position),
evaluates on dev every `eval_every` steps or each epoch, keeps the best params by the dev
metric, logs to `metrics.jsonl` and shows a tqdm bar with loss and tokens/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time

import jax
import numpy as np
from tqdm import tqdm

from dq_jax import data as data_lib
from dq_jax import distill, distributed, metrics as metrics_lib, sharding, train_step
from dq_jax.checkpoint import StageCheckpoints
from dq_jax.generate import GenerationConfig, decode_texts, generate
from dq_jax.modeling import Seq2SeqLM, init_elastic
from dq_jax.quant_config import ELASTIC
from dq_jax.spec import EvalSettings, TrainSettings

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """SIGTERM or Ctrl-C: a checkpoint was saved; `signum` gives the exit status 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def _stop_requests():
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (main thread only)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    previous = {s: signal.signal(s, lambda signum, _: got.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield got
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class MetricsLog:
    """Appends one JSON object per line to `DIR/metrics.jsonl`."""

    def __init__(self, path: str, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({k: (float(v) if isinstance(v, (np.floating, np.integer)) else v)
                                    for k, v in record.items()}) + "\n")


@dataclasses.dataclass
class StageData:
    train: data_lib.Tokenized
    dev: data_lib.Tokenized
    cfg: data_lib.DataConfig
    pad: int
    start: int | None
    model_type: str


def evaluate(model: Seq2SeqLM, params, data: data_lib.Tokenized, sd: StageData, ev: EvalSettings,
             tokenizer, desc: str = "eval") -> tuple[dict, list[str]]:
    """Generates for every example of `data` and scores against its references."""
    gen = GenerationConfig.from_model_config(
        model.cfg, num_beams=ev.num_beams, max_length=ev.max_length, min_length=ev.min_length,
        length_penalty=ev.length_penalty, no_repeat_ngram_size=ev.no_repeat_ngram_size)
    n = len(data.source) if not ev.max_examples else min(ev.max_examples, len(data.source))
    subset = data_lib.Tokenized(data.source[:n], data.target[:n], data.texts[:n])
    preds: list[str | None] = [None] * n
    batches = list(data_lib.eval_batches(subset, sd.cfg, ev.batch_size, sd.pad, sd.start, sd.model_type))
    # Every process generates the whole split on its own devices from a host copy of the
    # params: the scores agree everywhere, so all processes keep the same best checkpoint.
    params = distributed.to_host(params) if jax.process_count() > 1 else params
    for idx, batch in tqdm(batches, desc=desc, leave=False, disable=not distributed.is_main()):
        out = generate(model, params, batch["input_ids"], batch["attention_mask"], gen)
        for i, text in zip(idx, decode_texts(tokenizer, out.sequences)[: len(idx)]):
            preds[i] = text.strip()
    refs = [t for _, t in subset.texts]
    return metrics_lib.score(ev.metric, preds, refs), preds


def _optim(ts: TrainSettings, total: int) -> train_step.OptimConfig:
    return train_step.OptimConfig(learning_rate=ts.learning_rate, warmup_steps=int(ts.warmup_ratio * total),
                                  total_steps=total, weight_decay=ts.weight_decay, grad_clip=ts.grad_clip or None)


def train_stage(name: str, workdir: str, ts: TrainSettings, ev: EvalSettings, student: Seq2SeqLM, init_params,
                teacher: Seq2SeqLM | None, teacher_params, dcfg: distill.DistillConfig, sd: StageData,
                tokenizer, mesh, seed: int, mlog: MetricsLog) -> tuple[dict, dict | None]:
    """Trains one stage to completion (resuming if possible); returns (best params on host, best dev
    score) — the final params when no evaluation ran."""
    sharding.check_batch(ts.batch_size, mesh)
    rows = sharding.process_rows(mesh, ts.batch_size) if jax.process_count() > 1 else None
    it = data_lib.TrainIterator(sd.train, sd.cfg, ts.batch_size, ts.grad_accum, seed, sd.pad, sd.start,
                                sd.model_type, rows=rows)
    total = ts.steps or ts.epochs * it.steps_per_epoch
    if total <= 0:
        raise ValueError(f"Stage {name}: {len(sd.train.source)} training examples give no step at batch size "
                         f"{ts.batch_size} x {ts.grad_accum}; lower train.batch_size or add data.")
    if student.quant is not None and student.quant.elastic and ELASTIC not in init_params:
        # TBT initializes each learned step size from the first batch it quantizes; every process
        # computes it from the same global batch, so they agree.
        first = next(data_lib.TrainIterator(sd.train, sd.cfg, ts.batch_size, ts.grad_accum, seed, sd.pad, sd.start,
                                            sd.model_type))
        init_params = init_elastic(student, init_params, first["input_ids"][0], first["attention_mask"][0],
                                   first["decoder_input_ids"][0])
    tx = train_step.make_optimizer(_optim(ts, total), init_params)
    state, st_sh = train_step.init_state(init_params, tx, jax.random.PRNGKey(seed), mesh)
    t_sh = teacher_dev = None
    if teacher is not None:
        t_sh = sharding.param_shardings(teacher_params, mesh)
        teacher_dev = jax.device_put(teacher_params, t_sh)
    ckpts = StageCheckpoints(os.path.join(workdir, "checkpoints", name))
    best = None
    if ckpts.latest_step() is not None:
        state, extra = ckpts.restore(state, st_sh)
        it.state, best = extra["data"], extra.get("best")
        log.info("%s: resumed from step %d (%s)", name, int(state.step), ckpts.latest.directory)
    step_fn = train_step.compile_step(train_step.make_train_step(student, teacher, dcfg, tx), mesh, st_sh, t_sh)
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

    with _stop_requests() as stop:
        for step in range(start + 1, total + 1):
            state, m = step_fn(state, teacher_dev, train_step.shard_batch(next(it), mesh, ts.batch_size))
            bar.update(1)
            if step % ts.log_every == 0 or step == total:
                m = jax.device_get(m)
                check_finite(state)
                dt = time.perf_counter() - t_last
                rate = float(m["tokens"]) * ts.log_every / max(dt, 1e-9)
                t_last = time.perf_counter()
                bar.set_postfix(loss=f"{float(m['loss']):.4f}", tok_s=f"{rate:.0f}")
                mlog.write(stage=name, split="train", step=step, **{k: float(v) for k, v in m.items()})
            if step % eval_every == 0 or step == total:
                check_finite(state)  # never evaluate or keep a state that skipped a bad step
                score, _ = evaluate(student, state.params, sd.dev, sd, ev, tokenizer, desc=f"{name} dev")
                mlog.write(stage=name, split="dev", step=step, **{k: v for k, v in score.items()
                                                                  if isinstance(v, float)})
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
                signame = signal.Signals(stop[0]).name
                raise Interrupted(f"Stage {name} stopped by {signame} at step {step}; checkpoint saved at step "
                                  f"{ckpts.latest_step()} in {ckpts.latest.directory}. Rerun the same command "
                                  "to resume.", stop[0])
    bar.close()
    ckpts.wait()
    best_params = ckpts.restore_best(state.params, st_sh.params) if best is not None else state.params
    result = distributed.to_host(best_params)
    ckpts.close()
    return result, best
