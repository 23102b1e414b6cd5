"""A finished student loaded for generation, its weights resident as integer codes.

`load(path)` takes a packed file (`dq_jax.export.packed`) or a run's workdir (its `student_hf/`)
and returns an `InferenceStudent`: the model, params whose quantized weights are `Codes` (int8
values, fp32 scales; every other tensor fp32), the tokenizer and the run's generation settings.
From a packed file the codes are unpacked straight into int8 `Codes`: the fp32 weights of
quantized tensors never exist (`packed.load` would dequantize them). From a workdir the fp32
master weights are read and quantized once (`quantized_student`). Both give the same `Codes`.
Text in, text out is `dq_jax.inference.text`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import jax
import numpy as np

from dq_jax.export import packed
from dq_jax.export.workdir import STUDENT_DIR, STUDENT_META, finished_student, load_student, read_meta
from dq_jax.inference.generation_config import GenerationConfig
from dq_jax.inference.quantized_model import float_kernels_in, quantized_student, resident_bytes
from dq_jax.model import precision
from dq_jax.model.config import ModelConfig
from dq_jax.model.hf import load_tokenizer
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.quant.codes import Codes
from dq_jax.quant.config import QuantConfig

PACKED, WORKDIR = "packed", "workdir"


@dataclasses.dataclass(frozen=True)
class InferenceStudent:
    model: Seq2SeqLM
    params: dict  # quantized weights as `Codes` (int8 values, fp32 scales), the rest fp32, on device
    tokenizer: Any
    generation: GenerationConfig  # the run's settings (packed metadata or dq_jax.json)
    resident_bytes: int  # bytes `params` occupy
    fp32_bytes: int  # the same tensors held in fp32, as `packed.load` returns them
    kind: str  # PACKED or WORKDIR


def model_kind(path: str) -> str:
    """PACKED or WORKDIR, from the file header or directory listing only (no weights read);
    FileNotFoundError / ValueError with a one-line reason otherwise."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path} does not exist.")
    if os.path.isdir(path):
        if finished_student(path):
            return WORKDIR
        meta = os.path.join(path, STUDENT_DIR, STUDENT_META)
        raise ValueError(
            f"{path} is a directory without a finished student ({meta} is missing); pass a finished "
            "run's workdir or a packed .safetensors file."
        )
    try:
        packed.read_header(path)
    except packed.NotPackedError as e:
        if not e.readable and path.endswith(".safetensors"):  # meant as a packed file: say it is damaged
            raise
        raise ValueError(f"{path} is neither a workdir with a finished student nor a dq-jax packed file.") from None
    return PACKED


def _generation(cfg: ModelConfig, stored: dict) -> GenerationConfig:
    known = {f.name for f in dataclasses.fields(GenerationConfig)}
    return GenerationConfig.from_model_config(cfg, **{k: v for k, v in (stored or {}).items() if k in known})


def _packed_tokenizer(path: str, files: dict, model_type: str):
    if not files:
        raise ValueError(f"{path} holds no tokenizer files (it was written without a tokenizer directory).")
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                f.write(text)
        return load_tokenizer(d, model_type)


def _fp32_bytes(params: dict) -> int:
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, Codes))
    return 4 * sum(int(np.prod(x.shape)) for x in leaves)


def load(path: str, compute: str = QuantConfig.compute) -> InferenceStudent:
    """The student at `path` (packed file or workdir) for generation, weights resident as codes,
    computing in the run's precision. `compute` is the `QuantConfig.compute` mode of its
    quantized products."""
    if model_kind(path) == PACKED:
        cfg, header, params = packed.read_codes(path)
        quant = header.quant
        tokenizer = _packed_tokenizer(path, header.tokenizer, cfg.model_type)
        stored, kind, run_precision = header.generation_config, PACKED, header.precision
    else:
        directory = finished_student(path)
        info = read_meta(directory)
        master_cfg, master = load_student(directory)
        quant = QuantConfig.from_dict(info["quant_config"])
        model, params = quantized_student(master_cfg, quant, master)
        cfg = model.cfg  # untied when the table is quantized but the LM head is not, as in the packed file
        tokenizer, stored, kind = load_tokenizer(directory, cfg.model_type), info.get("generation_config"), WORKDIR
        run_precision = info.get("precision", "fp32")
    quant = dataclasses.replace(quant, compute=compute)
    dtype = precision.compute_dtype(run_precision)
    params = jax.device_put(float_kernels_in(params, dtype))
    model = Seq2SeqLM(cfg, quant, dtype=dtype)  # as the run evaluated it
    return InferenceStudent(
        model, params, tokenizer, _generation(cfg, stored), resident_bytes(params), _fp32_bytes(params), kind
    )
