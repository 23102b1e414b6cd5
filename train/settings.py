"""ml_collections config -> frozen RunSpec, with every check that needs no data or model."""

from __future__ import annotations

import json

import ml_collections

from dq_jax.data import DataConfig
from dq_jax.quant_config import QuantConfig
from dq_jax.spec import STAGES, EvalSettings, RunSpec, TrainSettings


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


def spec_from_config(c: ml_collections.ConfigDict) -> RunSpec:
    stages = tuple(s.strip() for s in c.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages has {unknown}; allowed stages: {list(STAGES)}.")
    if len(tuple(c.mesh)) != 3:
        raise ValueError(f"mesh={tuple(c.mesh)} must have three sizes (data, fsdp, tensor), e.g. (8, 1, 1).")
    q = c.quant
    quant = QuantConfig(weight_bits=_none_if_zero(q.weight_bits), embed_bits=_none_if_zero(q.embed_bits),
                        act_bits=_none_if_zero(q.act_bits), method=q.method,
                        weight_granularity=q.weight_granularity, act_scale=q.act_scale,
                        quantize_lm_head=q.quantize_lm_head, weight_clip=q.weight_clip, act_clip=q.act_clip)
    d = c.data
    data = DataConfig(name=d.name or None, subset=d.subset or None, train_files=_files(d.train_files),
                      validation_files=_files(d.validation_files), test_files=_files(d.test_files),
                      source_column=d.source_column, target_column=d.target_column,
                      max_source_length=d.max_source_length, max_target_length=d.max_target_length,
                      max_examples=d.max_examples or None, min_bucket=d.min_bucket, src_lang=d.src_lang or None, tgt_lang=d.tgt_lang or None)
    tr = c.train
    train = TrainSettings(batch_size=tr.batch_size, grad_accum=tr.grad_accum, learning_rate=tr.learning_rate,
                          weight_decay=tr.weight_decay, warmup_ratio=tr.warmup_ratio, grad_clip=tr.grad_clip,
                          epochs=tr.epochs, steps=tr.steps, log_every=tr.log_every, eval_every=tr.eval_every,
                          checkpoint_every=tr.checkpoint_every)
    teacher_train = TrainSettings(**{**train.__dict__, "learning_rate": c.teacher.learning_rate,
                                     "steps": c.teacher.steps, "epochs": c.teacher.epochs})
    e = c.eval
    ev = EvalSettings(metric=e.metric, batch_size=e.batch_size, num_beams=e.num_beams, max_length=e.max_length,
                      min_length=e.min_length, length_penalty=e.length_penalty,
                      no_repeat_ngram_size=e.no_repeat_ngram_size, max_examples=e.max_examples)
    weights = tuple(float(w) for w in c.distill.weights)
    if len(weights) != 2:
        raise ValueError(f"distill.weights={c.distill.weights!r} must be two numbers (logits, intermediate).")
    if c.distill.mode not in ("dq_bart", "masked"):
        raise ValueError(f"distill.mode={c.distill.mode!r}; choose 'dq_bart' or 'masked'.")
    return RunSpec(seed=c.seed, stages=stages, mesh=tuple(c.mesh), dtype=c.dtype, teacher_path=c.teacher.path,
                   teacher_scratch=c.teacher.scratch, tokenizer=c.teacher.tokenizer,
                   teacher_finetune=c.teacher.finetune, teacher_train=teacher_train,
                   student_layers=_layers(c.student.layers),
                   encoder_map=_map(c.student.encoder_map, "student.encoder_map"),
                   decoder_map=_map(c.student.decoder_map, "student.decoder_map"), quant=quant,
                   distill_mode=c.distill.mode, distill_weights=weights, distill_enabled=c.distill.enabled,
                   data=data, synthetic_data=c.data.synthetic, train=train, eval=ev,
                   config_json=json.dumps(c.to_dict(), default=str))
