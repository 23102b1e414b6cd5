"""What one training stage is (`Stage`): the model it trains, from which params, against which
teacher, on which data, with which settings, and where it writes."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np
from jax.sharding import Mesh

from dq_jax import data as data_lib
from dq_jax.distill import DistillConfig
from dq_jax.metrics_log import MetricsLog
from dq_jax.modeling import Seq2SeqLM
from dq_jax.spec import EvalSettings, TrainSettings


@dataclasses.dataclass(frozen=True)
class StageData:
    """A stage's tokenized train and dev splits and how its model's batches are built."""

    train: data_lib.Tokenized
    dev: data_lib.Tokenized
    cfg: data_lib.DataConfig
    pad: int  # the model's pad token id
    start: int | None  # the model's decoder start token id
    model_type: str  # bart | mbart (mBART's decoder starts with the target language code)

    def train_batches(self, ts: TrainSettings, seed: int, rows: np.ndarray | None = None) -> data_lib.TrainIterator:
        return data_lib.TrainIterator(self.train, self.cfg, ts.batch_size, ts.grad_accum, seed, self.pad, self.start,
                                      self.model_type, rows=rows)

    def eval_batches(self, split: data_lib.Tokenized, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
        return data_lib.eval_batches(split, self.cfg, batch_size, self.pad, self.start, self.model_type)


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
