"""What one training stage is (`Stage`): the model it trains, from which params, against which
teacher, on which data, with which settings, and where it writes."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from jax.sharding import Mesh

from dq_jax.data import batches as data_lib
from dq_jax.data.columns import Tokenized
from dq_jax.inference.evaluation import EvalSettings
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.training.distill import DistillConfig
from dq_jax.training.metrics_log import MetricsLog


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimizer and schedule of one training stage (the config holds the defaults)."""

    batch_size: int
    grad_accum: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    grad_clip: float  # 0: no clipping
    epochs: int
    steps: int  # > 0 overrides epochs
    log_every: int
    eval_every: int  # 0: after each epoch
    checkpoint_every: int
    remat: str = "none"  # none | full | dots (dq_jax.model.remat)
    profile_steps: tuple[int, int] | None = None  # (START, END): trace those steps (jax.profiler)
    peak_tflops: float = 0.0  # per device; 0: known table or measured
    wandb_project: str = ""  # "": no W&B


@dataclasses.dataclass(frozen=True)
class StageData:
    """A stage's tokenized train and dev splits and how its model's batches are built."""

    train: Tokenized
    dev: Tokenized
    batching: data_lib.Batching

    def train_batches(self, ts: TrainSettings, seed: int, rows: np.ndarray | None = None) -> data_lib.TrainIterator:
        return self.batching.train(self.train, ts.batch_size, ts.grad_accum, seed, rows)


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The frozen model whose outputs the distillation terms compare against."""

    model: Seq2SeqLM
    params: dict


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # "teacher" or "distill": names the checkpoints, metrics records and messages
    workdir: str
    train: TrainSettings
    eval: EvalSettings
    model: Seq2SeqLM  # what this stage trains
    init_params: dict
    teacher: Teacher | None  # None: task loss only
    distill: DistillConfig
    data: StageData
    tokenizer: Any  # a transformers tokenizer: decodes generations for scoring
    mesh: Mesh
    seed: int
    metrics: MetricsLog

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints", self.name)
