"""Frozen run settings: what `train/` builds from an ml_collections config, once.

`RunSpec` has a section per config section (`spec.teacher.path`, `spec.student.layers`,
`spec.distill.weights`, ...). Every value is already checked: the library reads these and
never the config.
"""

from __future__ import annotations

import dataclasses

from dq_jax.data.config import DataConfig
from dq_jax.inference.evaluation import EvalSettings
from dq_jax.quant.config import QuantConfig
from dq_jax.training.stage import TrainSettings

STAGES = ("teacher", "distill", "eval", "export")
SYNTHETIC_TASKS = ("demo",)  # what `data.synthetic` can generate into the workdir


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    path: str  # HF directory or hub id; "" when `scratch` names a size to train here
    scratch: str  # a `dq_jax.model.sizes.SCRATCH` size, or ""
    tokenizer: str  # a directory, "" (= path) or "train" (train one on the data)
    finetune: bool  # run the teacher stage on an HF teacher (False: use it as is)
    train: TrainSettings  # the student's settings with the teacher's learning rate and length

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer or self.path


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    layers: tuple[int, int]  # (encoder, decoder)
    encoder_map: tuple[int, ...]  # teacher layer per student layer; (): `distill.layer_map`'s rule
    decoder_map: tuple[int, ...]
    train_fraction: float = 1.0  # of the training split, for the distill stage (the teacher keeps all)
    seed: int = 0  # of the distill stage: data order, dropout and the train_fraction subset


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    mode: str  # dq_bart | masked
    weights: tuple[float, float]  # (logits, intermediate)
    enabled: bool  # False: quantization-only baseline (task loss, no teacher)


@dataclasses.dataclass(frozen=True)
class DataSpec(DataConfig):
    """The data settings, plus a task the job generates into the workdir first."""

    synthetic: str = ""  # one of SYNTHETIC_TASKS, or "" (the files or hub name say where rows are)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    seed: int
    stages: tuple[str, ...]
    mesh: tuple[int, int, int]  # (data, fsdp, tensor); one -1 takes the remaining devices
    precision: str  # fp32 | bf16 (dq_jax.model.precision)
    teacher: TeacherSpec
    student: StudentSpec
    quant: QuantConfig
    distill: DistillSpec
    data: DataSpec
    train: TrainSettings
    eval: EvalSettings
    compilation_cache: str = ""  # JAX's persistent compilation cache directory; "" (default place) or "off"
    config_json: str = "{}"  # the resolved config, written to results.json
