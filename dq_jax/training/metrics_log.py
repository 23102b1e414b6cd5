"""What a run logs, where a person watches it: `metrics.jsonl`, TensorBoard and Weights & Biases.

Each `Record` (a training log step, a dev evaluation, a model's test scores) becomes one JSON
line of `DIR/metrics.jsonl`, scalars in TensorBoard event files under `DIR/tensorboard/<stage>/`
and, with `train.wandb_project`, a W&B log entry. Tags read `<stage>/<split>/<name>`:
`distill/train/loss`, `teacher/dev/rougeLsum`, `distill/test/rougeLsum` (a model's test scores sit
with the stage that trained it). The resolved config of the latest invocation is the text `config`
in `DIR/tensorboard/`.

TensorBoard files are written with tensorboardX, chosen as a small, well-kept event writer with no
TensorFlow or PyTorch dependency. Its protos and synchronous record writer are used rather than
its `SummaryWriter`, which hands events to a background thread: here a record is on disk before
`write` returns, so the event files hold what metrics.jsonl holds even when the job is killed,
and a person watching sees each log step as it happens.

A stage resumed from its checkpoint at step S calls `resume(stage, S)`: what a killed run logged
for that stage after S goes, from metrics.jsonl (rewritten atomically) and from TensorBoard's
view (a SessionLog START event at step S + 1, tensorboardX's `purge_step`, after which TensorBoard
discards the directory's earlier events at steps >= S + 1; hence one directory per stage). W&B's
history is append-only: there a resumed stage's points after S appear twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Mapping

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.summary import scalar, text


class MissingExtra(ImportError, ValueError):
    """An optional package a setting needs is not installed (a ValueError too: `train.main` reports
    it as one line, like any other setting it cannot run with)."""


MODEL_STAGE = {"teacher": "teacher", "student": "distill"}  # the stage that trains each scored model


@dataclasses.dataclass(frozen=True)
class Record:
    stage: str  # teacher | distill | eval
    split: str  # train | dev | test
    values: Mapping[str, float]  # loss terms, grad_norm, learning rate, throughput; or the scores
    step: int | None = None  # the stage's step; None for test scores (at step 0 in TensorBoard)
    model: str | None = None  # whose test scores: teacher | student

    def line(self) -> dict:
        """The metrics.jsonl object: `stage`, `split`, `step` or `model`, then the values."""
        head = {"stage": self.stage, "split": self.split}
        head.update({"step": self.step} if self.step is not None else {})
        head.update({"model": self.model} if self.model is not None else {})
        return {**head, **{k: float(v) for k, v in self.values.items()}}

    @property
    def section(self) -> str:
        """The first part of the record's tags: its stage, or for test scores the model's stage."""
        return MODEL_STAGE.get(self.model, self.model) if self.model else self.stage

    def tags(self) -> dict[str, float]:
        return {f"{self.section}/{self.split}/{k}": float(v) for k, v in self.values.items()}


def _drop(path: str, stage: str | None, after: int) -> None:
    """Rewrites metrics.jsonl without the `stage` records past step `after` (a record without a
    step counts as step 0) and without lines a killed run left half-written (all `stage=None` does)."""
    if not os.path.exists(path):
        return
    keep, changed = [], False
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                changed = True
                continue
            if r.get("stage") == stage and r.get("step", 0) > after:
                changed = True
            else:
                changed |= not line.endswith("\n")
                keep.append(line if line.endswith("\n") else line + "\n")
    if not changed:
        return  # nothing to forget: the file stays as it is (a `tail -f` keeps following it)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never half of it


class _EventDir:
    """One TensorBoard run directory, written synchronously."""

    def __init__(self, directory: str, purge_from: int | None):
        os.makedirs(directory, exist_ok=True)
        # files are read in name order; the nanosecond suffix orders two opened in one second
        self._w = EventsWriter(os.path.join(directory, "events"), f".{time.time_ns()}")
        if purge_from is not None:
            self._event(Event(step=purge_from, session_log=SessionLog(status=SessionLog.START)))

    def _event(self, event: Event) -> None:
        event.wall_time = event.wall_time or time.time()
        self._w.write_event(event)
        self._w.flush()

    def scalars(self, step: int, tags: Mapping[str, float]) -> None:
        # one event for the whole record: one write and flush per log step
        values = [v for tag, value in tags.items() for v in scalar(tag, value).value]
        self._event(Event(step=step, summary=Summary(value=values)))

    def text(self, step: int, tag: str, body: str) -> None:
        self._event(Event(step=step, summary=text(tag, body)))

    def close(self) -> None:
        self._w.close()


class _Wandb:
    """A W&B run for the workdir: one run id kept in `DIR/wandb_run_id`, so a rerun continues it."""

    def __init__(self, project: str, workdir: str, config: dict):
        try:
            import wandb
        except ImportError as e:
            raise MissingExtra(
                f"train.wandb_project={project!r} needs the wandb package: pip install -e "
                "'.[wandb]' (the `wandb` extra), or leave train.wandb_project empty."
            ) from e
        id_file = os.path.join(workdir, "wandb_run_id")
        if os.path.exists(id_file):
            with open(id_file) as f:
                run_id = f.read().strip()
        else:
            run_id = uuid.uuid4().hex[:12]  # W&B run ids: lowercase letters and digits
            with open(id_file, "w") as f:
                f.write(run_id + "\n")
        self.run = wandb.init(
            project=project,
            id=run_id,
            resume="allow",
            config=config,
            name=os.path.basename(os.path.abspath(workdir)),
            dir=None if os.environ.get("WANDB_DIR") else workdir,
        )
        self._sections: set[str] = set()

    def log(self, record: Record) -> None:
        section = record.section
        if section not in self._sections:  # each stage plots against its own step
            self.run.define_metric(f"{section}/step")
            self.run.define_metric(f"{section}/*", step_metric=f"{section}/step")
            self._sections.add(section)
        self.run.log({**record.tags(), f"{section}/step": record.step or 0})

    def close(self) -> None:
        self.run.finish()


class MetricsLog:
    """`enabled=False` (processes other than the main one) writes nothing, so a multi-process run
    logs each record once."""

    def __init__(self, workdir: str, enabled: bool = True, config_json: str = "{}", wandb_project: str = ""):
        self.workdir, self.enabled = workdir, enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._runs: dict[str, _EventDir] = {}
        self._wandb = None
        if not enabled:
            return
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                f.seek(max(os.path.getsize(self.path) - 1, 0))
                if f.read(1) not in (b"\n", b""):  # a killed run's half line would swallow the next record
                    _drop(self.path, None, 0)
        # the config of this invocation replaces an earlier one's (TensorBoard's purge skips text)
        root_dir = os.path.join(workdir, "tensorboard")
        for name in os.listdir(root_dir) if os.path.isdir(root_dir) else ():
            if name.startswith("events.out.tfevents."):
                os.remove(os.path.join(root_dir, name))
        config = json.dumps(json.loads(config_json), indent=2)
        root = _EventDir(root_dir, purge_from=None)
        root.text(0, "config", "\n".join("    " + line for line in config.splitlines()))  # Markdown code block
        root.close()
        if wandb_project:
            self._wandb = _Wandb(wandb_project, workdir, json.loads(config_json))

    def _run(self, stage: str, purge_from: int | None = None) -> _EventDir:
        if purge_from is not None or stage not in self._runs:
            if stage in self._runs:
                self._runs[stage].close()
            self._runs[stage] = _EventDir(os.path.join(self.workdir, "tensorboard", stage), purge_from)
        return self._runs[stage]

    def resume(self, stage: str, step: int) -> None:
        """`stage` continues after `step` (0: from its start): forget what was logged for it later."""
        if self.enabled:
            _drop(self.path, stage, step)
            self._run(stage, purge_from=step + 1)

    def restart(self, stage: str) -> None:
        """`stage` runs again from nothing (the eval stage): forget everything logged for it."""
        if self.enabled:
            _drop(self.path, stage, -1)
            self._run(stage, purge_from=0)

    def write(self, record: Record) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record.line()) + "\n")
        self._run(record.stage).scalars(record.step or 0, record.tags())
        if self._wandb is not None:
            self._wandb.log(record)

    def close(self) -> None:
        for run in self._runs.values():
            run.close()
        self._runs.clear()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None
