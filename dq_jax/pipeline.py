"""The main job: data and tokenizer, teacher, DQ student, evaluation, export, results.json.

Every stage leaves its product in the workdir (`teacher_hf/`, `student_hf/`, checkpoints), so
rerunning the same command skips finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np

from dq_jax import data as data_lib
from dq_jax import demo_task, distill, distributed, hf, sharding, size
from dq_jax.model_config import ModelConfig
from dq_jax.modeling import Seq2SeqLM
from dq_jax.quant_config import split_elastic
from dq_jax.spec import SCRATCH_SIZES, RunSpec
from dq_jax.trainer import MetricsLog, StageData, evaluate, train_stage

log = logging.getLogger(__name__)


STUDENT_META = "dq_jax.json"  # quant and generation config beside the student's fp32 weights


def generation_settings(cfg: ModelConfig, ev) -> dict:
    from dq_jax.generate import GenerationConfig
    return GenerationConfig.from_model_config(
        cfg, num_beams=ev.num_beams, max_length=ev.max_length, min_length=ev.min_length,
        length_penalty=ev.length_penalty, no_repeat_ngram_size=ev.no_repeat_ngram_size).to_hf_dict()


def export_workdir(workdir: str, fmt: str, out: str | None = None) -> dict:
    """Exports the finished student of `workdir` as `hf` (directory) or `packed` (one file)."""
    from dq_jax import export
    from dq_jax.quant_config import QuantConfig
    student_dir = os.path.join(workdir, "student_hf")
    meta_path = os.path.join(student_dir, STUDENT_META)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{workdir} has no finished student ({meta_path} is missing); run the distill "
                                "stage first (python -m train.main ... --workdir the same directory).")
    with open(meta_path) as f:
        meta = json.load(f)
    cfg, params = load_student(student_dir)
    quant = QuantConfig(**meta["quant_config"])
    if fmt == "hf":
        out = out or os.path.join(workdir, "export", "hf")
        export.export_hf(cfg, params, quant, out, student_dir, meta["generation_config"])
        return {"path": out, "bytes": os.path.getsize(os.path.join(out, "model.safetensors"))}
    if fmt == "packed":
        out = out or os.path.join(workdir, "export", "student.packed.safetensors")
        export.write_packed(cfg, params, quant, out, student_dir, meta["generation_config"])
        return {"path": out, "bytes": os.path.getsize(out)}
    raise ValueError(f"--format {fmt!r}: choose 'hf' or 'packed'.")


def save_student(cfg: ModelConfig, params: dict, quant, student_dir: str, tokenizer_dir: str,
                 generation_config: dict) -> None:
    """fp32 master weights as an HF directory, plus the quant config, generation settings and
    learned activation step sizes in `dq_jax.json`."""
    from dq_jax.export import split_step_sizes
    weights, elastic = split_step_sizes(params)
    hf.save_pretrained(cfg, weights, student_dir, tokenizer_dir=tokenizer_dir)
    with open(os.path.join(student_dir, STUDENT_META), "w") as f:
        json.dump({"quant_config": dataclasses.asdict(quant), "generation_config": generation_config,
                   "elastic": elastic}, f, indent=2)


def load_student(student_dir: str) -> tuple[ModelConfig, dict]:
    """Inverse of `save_student`: (config, params with any `elastic` step sizes)."""
    from dq_jax.export import join_step_sizes
    cfg, params = hf.load_pretrained(student_dir)
    meta_path = os.path.join(student_dir, STUDENT_META)
    elastic = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            elastic = json.load(f).get("elastic", {})
    return cfg, join_step_sizes(params, elastic)


def resolve_mesh(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A -1 takes the devices the other axes leave."""
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh={shape}: at most one axis may be -1.")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        shape = tuple(jax.device_count() // rest if s == -1 else s for s in shape)
    return shape


def _prepare_data(spec: RunSpec, workdir: str) -> data_lib.DataConfig:
    if spec.synthetic_data == "demo":
        files = distributed.main_first(lambda: demo_task.write_splits(os.path.join(workdir, "data"), seed=spec.seed),
                                       "demo data")
        return dataclasses.replace(spec.data, train_files=(files["train"],),
                                   validation_files=(files["validation"],), test_files=(files["test"],))
    if spec.synthetic_data:
        raise ValueError(f"data.synthetic={spec.synthetic_data!r}; the only generated task is 'demo'.")
    return spec.data


def _tokenizer(spec: RunSpec, workdir: str, dcfg: data_lib.DataConfig):
    path = spec.tokenizer or spec.teacher_path
    if path == "train":
        path = distributed.main_first(
            lambda: demo_task.train_tokenizer(list(dcfg.train_files), os.path.join(workdir, "tokenizer")), "tokenizer")
    if not path:
        raise ValueError("No tokenizer: set teacher.path (an HF checkpoint with tokenizer files) or "
                         "teacher.tokenizer.")
    return hf.load_tokenizer(path, "mbart" if dcfg.src_lang else "bart"), path


def _scratch_config(name: str, tok) -> ModelConfig:
    if name not in SCRATCH_SIZES:
        raise ValueError(f"teacher.scratch={name!r}; choose one of {sorted(SCRATCH_SIZES)}.")
    return ModelConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                       forced_eos_token_id=tok.eos_token_id, **SCRATCH_SIZES[name])


def _init_params(cfg: ModelConfig, seed: int) -> dict:
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.device_get(jax.jit(Seq2SeqLM(cfg).init)(jax.random.PRNGKey(seed), ids, decoder_input_ids=ids)["params"])


def _check_vocab(cfg: ModelConfig, tok, where: str) -> None:
    if len(tok) > cfg.vocab_size:
        raise ValueError(f"The tokenizer has {len(tok)} tokens but the teacher at {where} has vocab_size "
                         f"{cfg.vocab_size}; use the teacher's own tokenizer.")


def _student_maps(spec: RunSpec, t_cfg: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    enc_layers, dec_layers = spec.student_layers
    return (distill.resolve_map(t_cfg.encoder_layers, enc_layers, spec.encoder_map or None, "encoder"),
            distill.resolve_map(t_cfg.decoder_layers, dec_layers, spec.decoder_map or None, "decoder"))


class WorkdirBusy(RuntimeError):
    pass


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """An exclusive lock on the workdir for the life of the run. The OS drops it when the process
    dies, even by SIGKILL, so a crashed run never leaves a stale lock behind."""
    if not distributed.is_main():  # multi-process runs share one workdir; process 0 holds it
        yield
        return
    f = open(os.path.join(workdir, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "unknown process"
        f.close()
        raise WorkdirBusy(f"Another run is using {workdir} ({owner}); wait for it to finish or choose "
                          "another --workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def run(spec: RunSpec, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):
        return _run(spec, workdir)


def _run(spec: RunSpec, workdir: str) -> dict:
    distributed.sync("start")  # all processes see the workdir as it was before this run
    mesh = sharding.make_mesh(resolve_mesh(spec.mesh))
    mlog = MetricsLog(os.path.join(workdir, "metrics.jsonl"), enabled=distributed.is_main())
    dcfg = _prepare_data(spec, workdir)
    tok, _ = _tokenizer(spec, workdir, dcfg)
    splits = {s: data_lib.tokenize(data_lib.load_rows(dcfg, s), tok, dcfg, s) for s in data_lib.SPLITS}
    teacher_dir = os.path.join(workdir, "teacher_hf")
    results: dict = {"workdir": os.path.abspath(workdir)}

    def stage_data(cfg: ModelConfig) -> StageData:
        return StageData(splits["train"], splits["validation"], dcfg, cfg.pad_token_id, cfg.decoder_start_token_id,
                         cfg.model_type)

    # Teacher: a finished teacher stage wins; else an HF teacher (fine-tuned or as is); else scratch.
    if os.path.exists(os.path.join(teacher_dir, "config.json")):
        t_cfg, t_params = hf.load_pretrained(teacher_dir)
    else:
        if spec.teacher_path:
            t_cfg, t_params = hf.load_pretrained(spec.teacher_path)
            _check_vocab(t_cfg, tok, spec.teacher_path)
            train_teacher = spec.teacher_finetune and "teacher" in spec.stages
        elif spec.teacher_scratch:
            t_cfg, t_params = _scratch_config(spec.teacher_scratch, tok), None
            train_teacher = True
            if "teacher" not in spec.stages:
                raise ValueError("teacher.scratch needs the 'teacher' stage; add it to stages.")
            t_params = _init_params(t_cfg, spec.seed)
        else:
            raise ValueError("No teacher: set teacher.path (HF checkpoint or hub id) or teacher.scratch.")
        _student_maps(spec, t_cfg)  # a student deeper than its teacher fails before any training
        if train_teacher:
            t_params, best = train_stage("teacher", workdir, spec.teacher_train, spec.eval, Seq2SeqLM(t_cfg), t_params,
                                         None, None, distill.DistillConfig(logit_weight=0, inter_weight=0),
                                         stage_data(t_cfg), tok, mesh, spec.seed, mlog)
            results["teacher_dev"] = best
        if distributed.is_main():
            hf.save_pretrained(t_cfg, t_params, teacher_dir)
            tok.save_pretrained(teacher_dir)  # with tokenizer_config.json, so special tokens are known
        distributed.sync("teacher saved")

    enc_layers, dec_layers = spec.student_layers
    enc_map, dec_map = _student_maps(spec, t_cfg)
    s_cfg, s_init = distill.init_student(t_cfg, t_params, enc_layers, dec_layers, enc_map, dec_map)
    student = Seq2SeqLM(s_cfg, spec.quant)
    student_dir = os.path.join(workdir, "student_hf")
    if "distill" in spec.stages and not os.path.exists(os.path.join(student_dir, "config.json")):
        w_logit, w_inter = spec.distill_weights if spec.distill_enabled else (0.0, 0.0)
        dcfg_loss = distill.DistillConfig(spec.distill_mode, w_logit, w_inter, enc_map, dec_map)
        s_params, best = train_stage("distill", workdir, spec.train, spec.eval, student, s_init,
                                     Seq2SeqLM(t_cfg) if dcfg_loss.uses_teacher else None,
                                     t_params if dcfg_loss.uses_teacher else None, dcfg_loss, stage_data(s_cfg),
                                     tok, mesh, spec.seed, mlog)
        results["student_dev"] = best
        if distributed.is_main():
            save_student(s_cfg, s_params, spec.quant, student_dir, teacher_dir, generation_settings(s_cfg, spec.eval))
        distributed.sync("student saved")
    s_params = load_student(student_dir)[1] if os.path.exists(os.path.join(student_dir, "config.json")) else s_init

    if "eval" in spec.stages:
        sd = stage_data(t_cfg)
        for who, model, params in (("teacher", Seq2SeqLM(t_cfg), t_params), ("student", student, s_params)):
            score, preds = evaluate(model, params, splits["test"], sd, spec.eval, tok, desc=f"{who} test")
            results[f"{who}_test"] = score
            mlog.write(stage="eval", split="test", model=who, **{k: v for k, v in score.items() if isinstance(v, float)})
            if distributed.is_main():
                with open(os.path.join(workdir, f"predictions_{who}_test.txt"), "w") as f:
                    f.write("\n".join(p.replace("\n", " ") for p in preds) + "\n")

    if "export" in spec.stages and os.path.exists(os.path.join(student_dir, STUDENT_META)) and distributed.is_main():
        results["export"] = {fmt: export_workdir(workdir, fmt) for fmt in ("hf", "packed")}
        results["export"]["teacher_safetensors_bytes"] = os.path.getsize(os.path.join(teacher_dir, "model.safetensors"))

    s_trainable = hf.abstract_trainable(s_cfg, spec.quant)
    t_shapes, s_shapes = hf.abstract_params(t_cfg), split_elastic(s_trainable)[0]
    teacher_mib = size.paper_size_mib(t_shapes, None, None)
    student_mib = size.paper_size_mib(s_shapes, spec.quant.weight_bits, spec.quant.embed_bits)
    packed = size.packed_size_bytes(s_trainable, spec.quant, tokenizer_bytes=size.tokenizer_bytes(teacher_dir))
    results["size"] = {"convention": "paper", "teacher_mib": teacher_mib, "student_mib": student_mib,
                       "compression_ratio": teacher_mib / student_mib,
                       "packed_student_mib": packed / size.MIB,
                       "packed_compression_ratio": teacher_mib / (packed / size.MIB)}
    results["config"] = json.loads(spec.config_json)
    if distributed.is_main():
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, default=float)
    return results
