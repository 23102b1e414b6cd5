"""The main job: data and tokenizer, teacher, DQ student, evaluation, export, results.json.

Every stage leaves its product in the workdir (`teacher_hf/`, `student_hf/`, checkpoints), so
rerunning the same command skips finished stages and resumes an interrupted one. A skipped
stage's dev score is read back from its best checkpoint: results.json is the same either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dq_jax import size
from dq_jax.data import batches as data_lib
from dq_jax.data import demo_task, token_cache
from dq_jax.data import source as data_source
from dq_jax.data.columns import Tokenized
from dq_jax.data.config import SPLITS, DataConfig
from dq_jax.export import packed
from dq_jax.export import workdir as run_dir
from dq_jax.export.workdir import export_workdir, load_student, save_student
from dq_jax.inference.evaluation import evaluate, generation_config
from dq_jax.model import hf
from dq_jax.model import sizes as model_sizes
from dq_jax.model.config import ModelConfig
from dq_jax.model.modeling import Seq2SeqLM, abstract_params, abstract_trainable
from dq_jax.parallel import distributed, sharding
from dq_jax.quant.config import split_elastic
from dq_jax.spec import RunSpec
from dq_jax.stages import DISTILL, TEACHER, RunStage, RunStages, TrainRows, build_model, derive
from dq_jax.training import distill
from dq_jax.training.checkpoint import StageCheckpoints
from dq_jax.training.metrics_log import MetricsLog, Record
from dq_jax.training.stage import Stage, StageData, Teacher
from dq_jax.training.trainer import train_stage
from dq_jax.utils import workdir_lock


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every part of one run shares."""

    spec: RunSpec
    workdir: str
    mesh: Mesh
    metrics: MetricsLog
    tokenizer: Any
    data: DataConfig
    splits: dict[str, Tokenized]  # by SPLITS name

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def stage_data(self, cfg: ModelConfig, train: Tokenized | None = None) -> StageData:
        return StageData(
            self.splits["train"] if train is None else train, self.splits["validation"], self.batching(cfg)
        )

    def batching(self, cfg: ModelConfig) -> data_lib.Batching:
        return data_lib.Batching(self.data, cfg.pad_token_id, cfg.decoder_start_token_id, cfg.model_type)

    def stage(self, rs: RunStage, init_params: dict, teacher_params: dict | None, train_split: Tokenized) -> Stage:
        model = rs.trained_model()
        teacher = None if rs.teacher is None else Teacher(rs.teacher_model(), teacher_params)
        return Stage(
            name=rs.name,
            workdir=self.workdir,
            train=rs.train,
            eval=self.spec.eval,
            model=model,
            init_params=init_params,
            teacher=teacher,
            distill=rs.loss,
            data=self.stage_data(model.cfg, train_split),
            tokenizer=self.tokenizer,
            mesh=self.mesh,
            seed=rs.seed,
            metrics=self.metrics,
        )

    def finished_teacher(self) -> bool:
        return run_dir.finished_teacher(self.workdir)

    def finished_student(self) -> bool:
        return run_dir.finished_student(self.path(run_dir.STUDENT_DIR)) is not None

    def best_dev(self, stage: str) -> dict | None:
        """The best dev score in a stage's checkpoints (None when that stage trained nothing here)."""
        directory = self.path("checkpoints", stage)
        if not os.path.isdir(os.path.join(directory, "best")):
            return None
        ckpts = StageCheckpoints(directory)
        try:
            return ckpts.best_score()
        finally:
            ckpts.close()


def run(spec: RunSpec, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    with _workdir_lock(workdir):
        return _run(spec, workdir)


def _workdir_lock(workdir: str):
    """Held for the life of the run; multi-process runs share one workdir and process 0 holds it."""
    if not distributed.is_main():
        return contextlib.nullcontext()
    where = workdir.replace("{", "{{").replace("}", "}}")  # `hold` fills in {owner} with str.format
    return workdir_lock.hold(
        os.path.join(workdir, ".lock"),
        f"Another run is using {where} ({{owner}}); wait for it to finish or choose another --workdir.",
    )


def _prepare_data(spec: RunSpec, workdir: str) -> DataConfig:
    if spec.data.synthetic == "demo":
        files = distributed.main_first(
            lambda: demo_task.write_splits(os.path.join(workdir, "data"), seed=spec.seed), "demo data"
        )
        return dataclasses.replace(
            spec.data,
            train_files=(files["train"],),
            validation_files=(files["validation"],),
            test_files=(files["test"],),
        )
    return spec.data


def _tokenizer(spec: RunSpec, workdir: str, data_cfg: DataConfig):
    path = spec.teacher.tokenizer_source
    if path == "train":
        path = distributed.main_first(
            lambda: demo_task.train_tokenizer(
                list(data_cfg.train_files),
                os.path.join(workdir, "tokenizer"),
                columns=(data_cfg.source_column, data_cfg.target_column),
            ),
            "tokenizer",
        )
    return hf.load_tokenizer(path, "mbart" if data_cfg.src_lang else "bart")


def _scratch_config(name: str, tok) -> ModelConfig:
    return model_sizes.model_config(
        name,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
        forced_eos_token_id=tok.eos_token_id,
    )


def _init_params(cfg: ModelConfig, seed: int) -> dict:
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.device_get(jax.jit(Seq2SeqLM(cfg).init)(jax.random.PRNGKey(seed), ids, decoder_input_ids=ids)["params"])


def _check_teacher_vocab(spec: RunSpec, workdir: str, tok) -> None:
    """Every id the tokenizer can produce must index the teacher's embedding: JAX would clamp an
    out-of-range id silently. Reads the teacher's config only (no weights)."""
    where = run_dir.teacher_dir(workdir) if run_dir.finished_teacher(workdir) else spec.teacher.path
    if not where:
        return  # a scratch teacher is sized from this tokenizer
    vocab = hf.load_model_config(hf.resolve(where, weights=False)).vocab_size
    if len(tok) > vocab:
        raise ValueError(
            f"The tokenizer ({spec.teacher.tokenizer_source}) has {len(tok)} tokens but the teacher at "
            f"{where} has vocab_size {vocab}: ids past {vocab - 1} would index nothing. Use the "
            "teacher's own tokenizer (teacher.tokenizer empty)."
        )


def _teacher_source(job: _Job, results: dict) -> tuple[ModelConfig, dict]:
    """The teacher as this run starts from it: a finished teacher stage's, else the HF teacher,
    else a scratch size freshly initialized (train/settings.py checked that one of them is set)."""
    spec = job.spec
    if job.finished_teacher():
        if (best := job.best_dev("teacher")) is not None:
            results["teacher_dev"] = best
        return hf.load_pretrained(run_dir.teacher_dir(job.workdir))
    if spec.teacher.path:
        return hf.load_pretrained(spec.teacher.path)
    t_cfg = _scratch_config(spec.teacher.scratch, job.tokenizer)
    return t_cfg, _init_params(t_cfg, spec.seed)


def _teacher(job: _Job, stages: RunStages, t_params: dict, results: dict) -> dict:
    """The teacher's params after its stage (trained here unless an earlier run finished it),
    saved to `teacher_hf/`."""
    rs = stages.get(TEACHER)
    if job.finished_teacher():
        return t_params
    if rs is not None:
        out = train_stage(job.stage(rs, t_params, None, job.splits["train"]))
        t_params, results["teacher_dev"] = out.params, out.best
    if distributed.is_main():
        hf.save_pretrained(stages.teacher, t_params, run_dir.teacher_dir(job.workdir))
        job.tokenizer.save_pretrained(
            run_dir.teacher_dir(job.workdir)
        )  # with tokenizer_config.json: special tokens known
    distributed.sync("teacher saved")
    return t_params


def student_train_split(spec: RunSpec, rows: TrainRows, train: Tokenized) -> tuple[Tokenized, dict]:
    """The rows of the training split the student trains on and their record for results.json:
    fraction, seed, how many of how many, and the SHA-256 of the row indices (int64,
    little-endian), which names the subset."""
    idx = data_lib.fraction_rows(len(train), rows.fraction, rows.seed)
    batch = spec.train.batch_size * spec.train.grad_accum
    if DISTILL in spec.stages and len(idx) < batch:
        raise ValueError(
            f"student.train_fraction={rows.fraction} keeps {len(idx)} of the "
            f"{len(train)} training examples, fewer than one batch of {batch} "
            "(train.batch_size x train.grad_accum): raise the fraction or lower the batch."
        )
    record = {
        "fraction": rows.fraction,
        "seed": rows.seed,
        "examples": len(idx),
        "of": len(train),
        "rows_sha256": hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest(),
    }
    return (train if len(idx) == len(train) else train.take(idx)), record


def _student(
    job: _Job, stages: RunStages, t_params: dict, train_split: Tokenized, results: dict
) -> tuple[Seq2SeqLM, dict]:
    """The student model and its params: distilled here on `train_split`, or as an earlier run
    left them."""
    spec, student_dir = job.spec, job.path(run_dir.STUDENT_DIR)
    rs = stages.get(DISTILL)
    s_cfg = stages.student
    _, s_init = distill.init_student(
        stages.teacher,
        t_params,
        s_cfg.encoder_layers,
        s_cfg.decoder_layers,
        spec.student.encoder_map,
        spec.student.decoder_map,
    )
    student = build_model(s_cfg, spec.quant, spec.precision)
    if job.finished_student():
        if (best := job.best_dev(DISTILL)) is not None:
            results["student_dev"] = best
    elif rs is not None:
        out = train_stage(job.stage(rs, s_init, t_params, train_split))
        results["student_dev"] = out.best
        if distributed.is_main():
            save_student(
                s_cfg,
                out.params,
                spec.quant,
                student_dir,
                run_dir.teacher_dir(job.workdir),
                generation_config(s_cfg, spec.eval).to_hf_dict(),
                spec.precision,
            )
        distributed.sync("student saved")
    return student, (load_student(student_dir)[1] if job.finished_student() else s_init)


def _test(job: _Job, models: tuple[tuple[str, Seq2SeqLM, dict], ...], results: dict) -> None:
    """Scores each (who, model, params) on the test split and writes its predictions."""
    job.metrics.restart("eval")  # scores an earlier, interrupted evaluation logged go
    for who, model, params in models:
        score, preds = evaluate(
            model, params, job.splits["test"], job.batching(model.cfg), job.spec.eval, job.tokenizer, desc=f"{who} test"
        )
        results[f"{who}_test"] = score
        job.metrics.write(Record("eval", "test", {k: v for k, v in score.items() if isinstance(v, float)}, model=who))
        if distributed.is_main():
            with open(job.path(f"predictions_{who}_test.txt"), "w") as f:
                f.write("\n".join(p.replace("\n", " ") for p in preds) + "\n")


def _sizes(spec: RunSpec, stages: RunStages, tokenizer_dir: str) -> dict:
    """Model sizes by the paper's convention and of the packed file, with compression ratios."""
    s_cfg = stages.student
    s_trainable = abstract_trainable(s_cfg, spec.quant)
    t_shapes, s_shapes = abstract_params(stages.teacher), split_elastic(s_trainable)[0]
    teacher_mib = size.paper_size_mib(t_shapes, None, None)
    student_mib = size.paper_size_mib(s_shapes, spec.quant.weight_bits, spec.quant.embed_bits)
    extras = packed.Extras(tokenizer_dir, generation_config(s_cfg, spec.eval).to_hf_dict(), spec.precision)
    file_bytes = packed.file_bytes(s_cfg, s_trainable, spec.quant, extras)
    return {
        "convention": "paper",
        "teacher_mib": teacher_mib,
        "student_mib": student_mib,
        "compression_ratio": teacher_mib / student_mib,
        "packed_student_mib": file_bytes / size.MIB,
        "packed_compression_ratio": teacher_mib / (file_bytes / size.MIB),
    }


def _run(spec: RunSpec, workdir: str) -> dict:
    distributed.sync("start")  # all processes see the workdir as it was before this run
    mesh = sharding.make_mesh(sharding.resolve_mesh(spec.mesh))
    metrics = MetricsLog(
        workdir, enabled=distributed.is_main(), config_json=spec.config_json, wandb_project=spec.train.wandb_project
    )
    data_cfg = _prepare_data(spec, workdir)
    data_source.check_local_files(data_cfg)  # before the hub is asked for anything
    tok = _tokenizer(spec, workdir, data_cfg)
    _check_teacher_vocab(spec, workdir, tok)  # before data downloads, tokenization and teacher weights
    splits = {
        s: distributed.main_first(lambda s=s: token_cache.tokenized_split(data_cfg, s, tok), f"tokenize {s}")
        for s in SPLITS
    }
    job = _Job(spec, workdir, mesh, metrics, tok, data_cfg, splits)
    results: dict = {"workdir": os.path.abspath(workdir)}
    t_cfg, t_params = _teacher_source(job, results)
    stages = derive(spec, t_cfg)  # a student the teacher cannot give fails here, before any training
    # before the teacher trains: a fraction too small for one batch fails now, not an hour later
    student_split, student_data = student_train_split(spec, stages.student_rows, splits["train"])
    if DISTILL in spec.stages or job.finished_student():  # a run with a student says what it saw
        results["student_train_data"] = student_data
    t_params = _teacher(job, stages, t_params, results)
    student, s_params = _student(job, stages, t_params, student_split, results)
    if "eval" in spec.stages:
        teacher = build_model(stages.teacher, None, spec.precision)
        _test(job, (("teacher", teacher, t_params), ("student", student, s_params)), results)
    if "export" in spec.stages and job.finished_student() and distributed.is_main():
        results["export"] = {fmt: export_workdir(workdir, fmt) for fmt in ("hf", "packed")}
        teacher_file = os.path.join(run_dir.teacher_dir(workdir), "model.safetensors")
        results["export"]["teacher_safetensors_bytes"] = os.path.getsize(teacher_file)
    results["size"] = _sizes(spec, stages, run_dir.teacher_dir(job.workdir))
    results["precision"] = spec.precision
    results["config"] = json.loads(spec.config_json)
    if distributed.is_main():
        with open(job.path("results.json"), "w") as f:
            json.dump(results, f, indent=2, default=float)
    metrics.close()
    return results
