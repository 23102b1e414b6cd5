"""A run's finished student on disk (`WORKDIR/student_hf/`) and its exports.

The student is kept as an HF directory of its fp32 master weights, plus `dq_jax.json`: the
quant config, generation settings and any learned activation step sizes. Exports are made
from that directory, so `train.export` works on any finished workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os

from dq_jax.export import hf_dir as export
from dq_jax.model import hf
from dq_jax.export import packed
from dq_jax.model.hf_layout import join_step_sizes, split_step_sizes
from dq_jax.model.config import ModelConfig
from dq_jax.quant.config import QuantConfig

STUDENT_META = "dq_jax.json"  # quant and generation config beside the student's fp32 weights


def save_student(cfg: ModelConfig, params: dict, quant: QuantConfig, student_dir: str, tokenizer_dir: str,
                 generation_config: dict, precision: str = "fp32") -> None:
    """fp32 master weights as an HF directory, plus the quant config, generation settings, the
    precision it was trained in and learned activation step sizes in `dq_jax.json`."""
    weights, elastic = split_step_sizes(params)
    hf.save_pretrained(cfg, weights, student_dir, tokenizer_dir=tokenizer_dir)
    with open(os.path.join(student_dir, STUDENT_META), "w") as f:
        json.dump({"quant_config": dataclasses.asdict(quant), "generation_config": generation_config,
                   "precision": precision, "elastic": elastic}, f, indent=2)


def load_student(student_dir: str) -> tuple[ModelConfig, dict]:
    """Inverse of `save_student`: (config, params with any `elastic` step sizes)."""
    cfg, params = hf.load_pretrained(student_dir)
    meta_path = os.path.join(student_dir, STUDENT_META)
    elastic = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            elastic = json.load(f).get("elastic", {})
    return cfg, join_step_sizes(params, elastic)


def export_workdir(workdir: str, fmt: str, out: str | None = None) -> dict:
    """Exports the finished student of `workdir` as `hf` (directory) or `packed` (one file);
    returns {"path", "bytes"}."""
    student_dir = os.path.join(workdir, "student_hf")
    meta_path = os.path.join(student_dir, STUDENT_META)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{workdir} has no finished student ({meta_path} is missing); run the distill "
                                "stage first (python -m train.main ... --workdir the same directory).")
    with open(meta_path) as f:
        meta = json.load(f)
    cfg, params = load_student(student_dir)
    quant = QuantConfig.from_dict(meta["quant_config"])
    if fmt == "hf":
        out = out or os.path.join(workdir, "export", "hf")
        export.export_hf(cfg, params, quant, out, student_dir, meta["generation_config"])
        return {"path": out, "bytes": os.path.getsize(os.path.join(out, "model.safetensors"))}
    if fmt == "packed":
        out = out or os.path.join(workdir, "export", "student.packed.safetensors")
        packed.write(cfg, params, quant, out, student_dir, meta["generation_config"], meta.get("precision", "fp32"))
        return {"path": out, "bytes": os.path.getsize(out)}
    raise ValueError(f"--format {fmt!r}: choose 'hf' or 'packed'.")
