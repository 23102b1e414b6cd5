"""ml_collections config -> frozen RunSpec, with every check that needs no data or model.

This is the one place a config is validated and becomes typed values, so a mistake fails
before a run locks its workdir, generates data or trains anything. Library dataclasses
(QuantConfig, ...) still check their own invariants when built here.
"""

from __future__ import annotations

import dataclasses
import json

import ml_collections

from dq_jax.model import precision, remat
from dq_jax.model import sizes as model_sizes
from dq_jax.parallel.distributed import ENV, DistributedConfig
from dq_jax.quant.config import QuantConfig
from dq_jax.spec import (
    STAGES,
    SYNTHETIC_TASKS,
    DataSpec,
    DistillSpec,
    EvalSettings,
    RunSpec,
    StudentSpec,
    TeacherSpec,
    TrainSettings,
)
from dq_jax.stages import DISTILL, TEACHER, trained_stages
from dq_jax.training import distill as distill_lib
from train.config_ranges import check_ranges


def _files(value: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in value.split(",") if f.strip())


def _map(value: str, key: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as e:
        raise ValueError(f"{key}={value!r}: write teacher layer indices separated by commas, e.g. '0,2,5'.") from e


def _layers(value: str) -> tuple[int, int]:
    try:
        enc, dec = (int(v) for v in value.split("-"))
    except ValueError as e:
        raise ValueError(f"student.layers={value!r}: write encoder-decoder layer counts, e.g. '6-3'.") from e
    if enc < 1 or dec < 1:
        raise ValueError(f"student.layers={value!r}: both layer counts must be at least 1.")
    return enc, dec


def _none_if_zero(v):
    return None if v in (None, 0, "") else v


def _section(cls, section: ml_collections.ConfigDict, **converted):
    """`cls` built from the config section's keys (each one a field of `cls`), with the values
    in `converted` taking the place of those that need converting."""
    return cls(**{**section.to_dict(), **converted})


def _stages(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in c.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages has {unknown}; allowed stages: {list(STAGES)}.")
    return stages


def _train(t: ml_collections.ConfigDict) -> TrainSettings:
    if t.remat not in remat.REMAT:
        raise ValueError(f"train.remat={t.remat!r}; choose one of {list(remat.REMAT)}.")
    return _section(TrainSettings, t, profile_steps=_profile_steps(t.profile_steps))


def _profile_steps(value: str) -> tuple[int, int] | None:
    """`train.profile_steps` "START,END" -> (START, END); "" -> None."""
    if not value:
        return None
    try:
        start, end = (int(v) for v in value.split(","))
    except ValueError as e:
        raise ValueError(f"train.profile_steps={value!r}: write the first and last step to trace, e.g. '10,12'.") from e
    if not 1 <= start <= end:
        raise ValueError(f"train.profile_steps={value!r}: need 1 <= START <= END.")
    return start, end


def _distill(d: ml_collections.ConfigDict) -> DistillSpec:
    weights = tuple(float(w) for w in d.weights)  # two numbers >= 0 (RANGES)
    if d.mode not in distill_lib.MODES:
        raise ValueError(f"distill.mode={d.mode!r}; choose one of {list(distill_lib.MODES)}.")
    return _section(DistillSpec, d, weights=weights)


def _data(d: ml_collections.ConfigDict) -> DataSpec:
    if d.synthetic and d.synthetic not in SYNTHETIC_TASKS:
        raise ValueError(f"data.synthetic={d.synthetic!r}; the only generated task is 'demo'.")
    return _section(
        DataSpec,
        d,
        name=d.name or None,
        subset=d.subset or None,
        revision=d.revision or None,
        cache_dir=d.cache_dir or None,
        train_files=_files(d.train_files),
        validation_files=_files(d.validation_files),
        test_files=_files(d.test_files),
        max_examples=d.max_examples or None,
        src_lang=d.src_lang or None,
        tgt_lang=d.tgt_lang or None,
    )


def _teacher(t: ml_collections.ConfigDict, stages: tuple[str, ...], train: TrainSettings) -> TeacherSpec:
    if not (t.tokenizer or t.path):
        raise ValueError("No tokenizer: set teacher.path (an HF checkpoint with tokenizer files) or teacher.tokenizer.")
    if t.scratch and t.scratch not in model_sizes.SCRATCH:
        raise ValueError(f"teacher.scratch={t.scratch!r}; choose one of {sorted(model_sizes.SCRATCH)}.")
    if not t.path:
        if not t.scratch:
            raise ValueError("No teacher: set teacher.path (HF checkpoint or hub id) or teacher.scratch.")
        if "teacher" not in stages:
            raise ValueError("teacher.scratch needs the 'teacher' stage; add it to stages.")
    teacher_train = dataclasses.replace(train, learning_rate=t.learning_rate, steps=t.steps, epochs=t.epochs)
    return TeacherSpec(path=t.path, scratch=t.scratch, tokenizer=t.tokenizer, finetune=t.finetune, train=teacher_train)


def spec_from_config(c: ml_collections.ConfigDict) -> RunSpec:
    stages = _stages(c)
    check_ranges(c)
    q = c.quant
    quant = _section(
        QuantConfig,
        q,
        weight_bits=_none_if_zero(q.weight_bits),
        embed_bits=_none_if_zero(q.embed_bits),
        act_bits=_none_if_zero(q.act_bits),
    )
    train, ev = _train(c.train), _section(EvalSettings, c.eval)
    distill = _distill(c.distill)
    student = StudentSpec(
        layers=_layers(c.student.layers),
        encoder_map=_map(c.student.encoder_map, "student.encoder_map"),
        decoder_map=_map(c.student.decoder_map, "student.decoder_map"),
        train_fraction=float(c.student.train_fraction),
        seed=c.seed if c.student.seed == -1 else c.student.seed,
    )
    data = _data(c.data)
    if c.precision not in precision.PRECISIONS:
        raise ValueError(f"precision={c.precision!r}; choose one of {list(precision.PRECISIONS)}.")
    spec = RunSpec(
        seed=c.seed,
        stages=stages,
        mesh=tuple(c.mesh),
        precision=c.precision,
        compilation_cache=c.compilation_cache,
        teacher=_teacher(c.teacher, stages, train),
        student=student,
        quant=quant,
        distill=distill,
        data=data,
        train=train,
        eval=ev,
        config_json=json.dumps(c.to_dict(), default=str),
    )
    _check_lengths(spec)
    return spec


def _check_lengths(spec: RunSpec) -> None:
    """A stage that trains needs a length; checked only where it trains, so an unused section's
    zeros are no error."""
    trained = trained_stages(spec)[0]
    for name, section, ts in ((DISTILL, "train", spec.train), (TEACHER, "teacher", spec.teacher.train)):
        if name in trained and ts.steps == 0 and ts.epochs == 0:
            raise ValueError(
                f"{section}.steps=0 and {section}.epochs=0 train nothing: set {section}.steps >= 1 "
                f"(it overrides epochs) or {section}.epochs >= 1."
            )


def distributed_from_config(c: ml_collections.ConfigDict, environ=None) -> DistributedConfig:
    """The multi-process settings: the config's `distributed` section, with empty values taken
    from the JAX_* environment variables, checked."""
    dist = DistributedConfig(**c.distributed.to_dict()).with_env(environ)
    if dist.enabled and not dist.auto:  # auto: Slurm, Open MPI or Cloud TPU give the rest
        if dist.num_processes < 1:
            raise ValueError(
                f"distributed.coordinator_address={dist.coordinator_address!r} needs "
                f"distributed.num_processes (or {ENV['num_processes']}) >= 1, or distributed.auto=True "
                "on Slurm, Open MPI or Cloud TPU."
            )
        if not 0 <= dist.process_id < dist.num_processes:
            raise ValueError(
                f"distributed.process_id={dist.process_id} (or {ENV['process_id']}) must be in "
                f"0..{dist.num_processes - 1} for {dist.num_processes} processes."
            )
    return dist
