"""What a run trains, decided once: from the resolved spec and the teacher's config, the training
stages that run, each with its models, loss and data, and the student every later stage uses.

The pipeline runs these stages, the planner compiles their steps, `train.size` sizes their
student and the sweep planner shares their teacher; none of them decides anything of this again.
"""

from __future__ import annotations

import dataclasses
import os

from dq_jax.data import demo_task
from dq_jax.model import hf, precision
from dq_jax.model import sizes as model_sizes
from dq_jax.model.config import ModelConfig
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.quant.config import QuantConfig
from dq_jax.spec import RunSpec
from dq_jax.training import distill
from dq_jax.training.stage import TrainSettings

TEACHER, DISTILL = "teacher", "distill"


@dataclasses.dataclass(frozen=True)
class TrainRows:
    """The rows of the training split a stage trains on: `fraction` of them (all at 1.0), drawn
    by `seed` (`data.fraction_rows`)."""

    fraction: float = 1.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class RunStage:
    """One training stage: the model it trains, the frozen teacher its loss compares against,
    the loss, its settings, seed and rows, and the precision it computes in."""

    name: str  # teacher | distill: names its checkpoints, metrics records and messages
    model: ModelConfig
    quant: QuantConfig | None  # None: full precision
    teacher: ModelConfig | None  # None: the task loss alone
    loss: distill.DistillConfig
    train: TrainSettings
    seed: int  # data order and dropout
    rows: TrainRows
    precision: str

    def trained_model(self) -> Seq2SeqLM:
        """The model the stage trains, with its `train.remat`."""
        return build_model(self.model, self.quant, self.precision, self.train.remat)

    def teacher_model(self) -> Seq2SeqLM | None:
        return None if self.teacher is None else build_model(self.teacher, None, self.precision)


@dataclasses.dataclass(frozen=True)
class RunStages:
    teacher: ModelConfig
    student: ModelConfig  # what distillation trains, evaluation scores and the exports hold
    stages: tuple[RunStage, ...]  # the training stages that run, in order
    skipped: tuple[tuple[str, str], ...]  # (stage, why it does not train)
    student_rows: TrainRows  # the training rows the student learns from

    def get(self, name: str) -> RunStage | None:
        return next((s for s in self.stages if s.name == name), None)


def build_model(cfg: ModelConfig, quant: QuantConfig | None, run_precision: str, remat: str = "none") -> Seq2SeqLM:
    """A model as a run builds it: computing in the run's precision (params stay fp32); only a
    model being trained needs `remat` (frozen teachers and evaluation do not differentiate)."""
    return Seq2SeqLM(cfg, quant, dtype=precision.compute_dtype(run_precision), remat=remat)


def trained_stages(spec: RunSpec) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The names of the training stages that run, and (name, why) for those that do not. The
    teacher trains in the teacher stage when it is trained from scratch or fine-tuned."""
    names, skipped = [], []
    if TEACHER not in spec.stages:
        skipped.append((TEACHER, "not in stages"))
    elif spec.teacher.path and not spec.teacher.finetune:
        skipped.append((TEACHER, "teacher.finetune=False: the teacher is used as it is"))
    else:
        names.append(TEACHER)
    if DISTILL in spec.stages:
        names.append(DISTILL)
    else:
        skipped.append((DISTILL, "not in stages"))
    return tuple(names), tuple(skipped)


def derive(spec: RunSpec, teacher: ModelConfig) -> RunStages:
    """The run's stages for a teacher of config `teacher`. A student the teacher cannot give
    (deeper than it without an explicit layer map, a map outside its layers) fails here, before
    anything trains."""
    enc_layers, dec_layers = spec.student.layers
    student, enc_map, dec_map = distill.student_config(
        teacher, enc_layers, dec_layers, spec.student.encoder_map, spec.student.decoder_map
    )
    names, skipped = trained_stages(spec)
    student_rows = TrainRows(spec.student.train_fraction, spec.student.seed)
    stages = []
    if TEACHER in names:  # the teacher alone, on the task loss and the whole training split
        stages.append(
            RunStage(
                TEACHER,
                teacher,
                None,
                None,
                distill.DistillConfig(logit_weight=0, inter_weight=0),
                spec.teacher.train,
                spec.seed,
                TrainRows(1.0, spec.seed),
                spec.precision,
            )
        )
    if DISTILL in names:
        w_logit, w_inter = spec.distill.weights if spec.distill.enabled else (0.0, 0.0)
        loss = distill.DistillConfig(spec.distill.mode, w_logit, w_inter, enc_map, dec_map)
        stages.append(
            RunStage(
                DISTILL,
                student,
                spec.quant,
                teacher if loss.uses_teacher else None,
                loss,
                spec.train,
                spec.student.seed,
                student_rows,
                spec.precision,
            )
        )
    return RunStages(teacher, student, tuple(stages), skipped, student_rows)


@dataclasses.dataclass(frozen=True)
class TeacherShape:
    cfg: ModelConfig
    source: str  # where the shapes came from, for people


def teacher_shape(spec: RunSpec) -> TeacherShape:
    """The teacher's shapes from its config.json only (no weights): a local directory, a hub id
    (offline, a known checkpoint's standard shapes), or a scratch size with the tokenizer's vocab."""
    path = spec.teacher.path
    if path:
        try:
            return TeacherShape(hf.load_model_config(hf.resolve(path, weights=False)), f"{path} (config.json)")
        except FileNotFoundError:
            if os.path.isdir(path) or path not in model_sizes.HUB:
                raise
            return TeacherShape(
                model_sizes.model_config(model_sizes.HUB[path]),
                f"{path} (hub unreachable: the standard '{model_sizes.HUB[path]}' shapes)",
            )
    cfg = model_sizes.model_config(spec.teacher.scratch)
    vocab, where = _scratch_vocab(spec, cfg.vocab_size)
    return TeacherShape(cfg.replace(vocab_size=vocab), f"scratch '{spec.teacher.scratch}', vocab {vocab} ({where})")


def _scratch_vocab(spec: RunSpec, default: int) -> tuple[int, str]:
    """A scratch teacher's vocabulary is its tokenizer's (the pipeline sizes it from the tokenizer)."""
    source = spec.teacher.tokenizer_source
    if source == "train":  # the pipeline trains the demo tokenizer at train_tokenizer's default size
        return demo_task.TOKENIZER_VOCAB, "the demo tokenizer"
    try:
        return len(hf.load_tokenizer(source, "mbart" if spec.data.src_lang else "bart")), f"tokenizer {source}"
    except (OSError, ValueError):  # a hub tokenizer offline
        return default, f"tokenizer {source} unreachable: the size's default"
