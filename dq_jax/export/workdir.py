"""A run's workdir as the stages leave it: the teacher (`teacher_hf/`), the finished student
(`student_hf/`) and its exports (`export/`). The one place these names are spelled and that
decides what counts as finished.

The student is kept as an HF directory of its fp32 master weights, plus `dq_jax.json`: the quant
config, generation settings, the precision it trained in and any learned activation step sizes.
Exports are made from that directory, so `train.export` works on any finished workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os

from dq_jax.export import hf_dir, packed
from dq_jax.model import hf
from dq_jax.model.config import ModelConfig
from dq_jax.model.hf_layout import join_step_sizes, split_step_sizes
from dq_jax.quant.config import QuantConfig

TEACHER_DIR = "teacher_hf"  # the teacher a run trained or started from, with its tokenizer
STUDENT_DIR = "student_hf"  # the finished student
STUDENT_META = hf_dir.META_FILE  # beside the student's fp32 weights: what HF's config.json cannot hold
EXPORTS = {"hf": os.path.join("export", "hf"), "packed": os.path.join("export", "student.packed.safetensors")}


def teacher_dir(workdir: str) -> str:
    return os.path.join(workdir, TEACHER_DIR)


def finished_teacher(workdir: str) -> bool:
    return os.path.exists(os.path.join(teacher_dir(workdir), "config.json"))


def finished_student(path: str) -> str | None:
    """The finished student's directory of a workdir (or `path` itself if it is one): it holds
    both its weights' config.json and `dq_jax.json`. None otherwise."""
    for d in (os.path.join(path, STUDENT_DIR), path):
        if os.path.exists(os.path.join(d, STUDENT_META)) and os.path.exists(os.path.join(d, "config.json")):
            return d
    return None


def save_student(
    cfg: ModelConfig,
    params: dict,
    quant: QuantConfig,
    directory: str,
    tokenizer_dir: str,
    generation_config: dict,
    precision: str = "fp32",
) -> None:
    """fp32 master weights as an HF directory with the tokenizer's files, plus the quant config,
    generation settings, the precision it was trained in and learned activation step sizes in
    `dq_jax.json` (written last: a student without it is not finished)."""
    weights, elastic = split_step_sizes(params)
    hf.save_pretrained(cfg, weights, directory, tokenizer_dir=tokenizer_dir)
    with open(os.path.join(directory, STUDENT_META), "w") as f:
        json.dump(
            {
                "quant_config": dataclasses.asdict(quant),
                "generation_config": generation_config,
                "precision": precision,
                "elastic": elastic,
            },
            f,
            indent=2,
        )


def read_meta(student_dir: str) -> dict:
    with open(os.path.join(student_dir, STUDENT_META)) as f:
        return json.load(f)


def load_student(student_dir: str) -> tuple[ModelConfig, dict]:
    """Inverse of `save_student`: (config, params with any `elastic` step sizes)."""
    cfg, params = hf.load_pretrained(student_dir)
    return cfg, join_step_sizes(params, read_meta(student_dir).get("elastic", {}))


def export_workdir(workdir: str, fmt: str, out: str | None = None) -> dict:
    """Exports the finished student of `workdir` as `hf` (directory) or `packed` (one file);
    returns {"path", "bytes"}."""
    directory = os.path.join(workdir, STUDENT_DIR)
    if finished_student(directory) != directory:
        meta_path = os.path.join(directory, STUDENT_META)
        raise FileNotFoundError(
            f"{workdir} has no finished student ({meta_path} is missing); run the distill "
            "stage first (python -m train.main ... --workdir the same directory)."
        )
    meta = read_meta(directory)
    cfg, params = load_student(directory)
    quant = QuantConfig.from_dict(meta["quant_config"])
    out = out or os.path.join(workdir, EXPORTS[fmt])
    if fmt == "hf":
        hf_dir.export_hf(cfg, params, quant, out, directory, meta["generation_config"])
        return {"path": out, "bytes": os.path.getsize(os.path.join(out, "model.safetensors"))}
    extras = packed.Extras(directory, meta["generation_config"], meta.get("precision", "fp32"))
    packed.write(cfg, params, quant, out, extras)
    return {"path": out, "bytes": os.path.getsize(out)}
