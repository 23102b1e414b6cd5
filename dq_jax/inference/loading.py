"""A finished student loaded for generation, its weights resident as integer codes, and text in,
text out.

`load(path)` takes a packed file (`dq_jax.export.packed`) or a run's workdir (its `student_hf/`)
and returns an `InferenceStudent`: the model, params whose quantized weights are `Codes` (int8
values, fp32 scales; every other tensor fp32), the tokenizer and the run's generation settings.
From a packed file the codes are unpacked straight into int8 `Codes`: the fp32 weights of
quantized tensors never exist (`load_packed` would dequantize them). From a workdir the fp32
master weights are read and quantized once (`quantized_student`). Both give the same `Codes`.

`encode(student, lines)` tokenizes one document per line (blank lines kept as blanks, over-long
ones truncated), `generate_texts(student, encoded, batch_size)` generates in length-sorted,
fixed-shape batches and returns one output line per input line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from dq_jax.export import packed
from dq_jax.model import precision
from dq_jax.quant.codes import Codes
from dq_jax.data.batches import bucket
from dq_jax.inference.generate import GenerationConfig, decode_texts, generate
from dq_jax.model.hf import load_tokenizer
from dq_jax.model.config import ModelConfig
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.quant.config import QuantConfig
from dq_jax.inference.quantized_model import float_kernels_in, quantized_student, resident_bytes
from dq_jax.export.workdir import STUDENT_META, load_student

PACKED, WORKDIR = "packed", "workdir"
MIN_BUCKET = 8  # shortest padded source length: one compilation per power of two above it


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
        if student_dir(path):
            return WORKDIR
        meta = os.path.join(path, "student_hf", STUDENT_META)
        raise ValueError(f"{path} is a directory without a finished student ({meta} is missing); pass a finished "
                         "run's workdir or a packed .safetensors file.")
    try:
        packed.read_header(path)
    except packed.NotPackedError as e:
        if not e.readable and path.endswith(".safetensors"):  # meant as a packed file: say it is damaged
            raise
        raise ValueError(f"{path} is neither a workdir with a finished student nor a dq-jax packed file.") from None
    return PACKED


def student_dir(path: str) -> str | None:
    """The student directory of a workdir (or `path` itself if it is one), or None."""
    for d in (os.path.join(path, "student_hf"), path):
        if os.path.exists(os.path.join(d, STUDENT_META)) and os.path.exists(os.path.join(d, "config.json")):
            return d
    return None


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


def load(path: str, compute: str = "codes") -> InferenceStudent:
    """The student at `path` (packed file or workdir) for generation, weights resident as codes,
    computing in the run's precision. `compute` is the `QuantConfig.compute` mode of its
    quantized products."""
    if model_kind(path) == PACKED:
        cfg, header, params = packed.read_codes(path)
        quant = header.quant
        tokenizer = _packed_tokenizer(path, header.tokenizer, cfg.model_type)
        stored, kind, run_precision = header.generation_config, PACKED, header.precision
    else:
        directory = student_dir(path)
        with open(os.path.join(directory, STUDENT_META)) as f:
            info = json.load(f)
        master_cfg, master = load_student(directory)
        quant = QuantConfig.from_dict(info["quant_config"])
        model, params = quantized_student(master_cfg, quant, master)
        cfg = model.cfg  # untied when the table is quantized but the LM head is not, as in the packed file
        tokenizer, stored, kind = load_tokenizer(directory, cfg.model_type), info.get("generation_config"), WORKDIR
        run_precision = info.get("precision", "fp32")
    if "compute" in {f.name for f in dataclasses.fields(QuantConfig)}:
        quant = dataclasses.replace(quant, compute=compute)
    dtype = precision.compute_dtype(run_precision)
    params = jax.device_put(float_kernels_in(params, dtype))
    model = Seq2SeqLM(cfg, quant, dtype=dtype)  # as the run evaluated it
    return InferenceStudent(model, params, tokenizer, _generation(cfg, stored), resident_bytes(params),
                            _fp32_bytes(params), kind)


# ----------------------------------------------------------------------------- text in, text out

@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: list[np.ndarray | None]  # one per input line: source token ids, None for a blank line
    truncated: int  # lines longer than the model's source positions, cut to fit
    max_tokens: int  # that limit


@dataclasses.dataclass(frozen=True)
class Generated:
    texts: list[str]  # one per input line, "" for blank lines, no newlines inside
    tokens: int  # generated tokens (the decoder start token not counted, EOS counted)
    seconds: float  # wall time of the generation loop, compilation included
    steady_tokens: int  # of those, the tokens of batches whose shape was already compiled
    steady_seconds: float  # and those batches' time

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_tokens_per_second(self) -> float | None:
        """Throughput of the batches whose shape was already compiled; None if there were none."""
        return self.steady_tokens / self.steady_seconds if self.steady_seconds > 0 else None


def encode(student: InferenceStudent, lines: list[str]) -> Encoded:
    """Tokenizes one document per line; lines longer than `max_position_embeddings` tokens keep
    their first tokens and end in EOS, as training truncates sources."""
    limit = student.model.cfg.max_position_embeddings
    tok = student.tokenizer
    texts = [line.strip() for line in lines]
    keep = [i for i, t in enumerate(texts) if t]
    ids: list[np.ndarray | None] = [None] * len(texts)
    truncated = 0
    for i, row in zip(keep, tok([texts[i] for i in keep])["input_ids"] if keep else []):
        if len(row) > limit:
            row, truncated = list(row[: limit - 1]) + [tok.eos_token_id], truncated + 1
        ids[i] = np.asarray(row, np.int32)
    return Encoded(ids, truncated, limit)


def generate_texts(student: InferenceStudent, encoded: Encoded, batch_size: int = 16,
                   gen: GenerationConfig | None = None, progress: bool = True) -> Generated:
    """Generates for every non-blank line, `batch_size` documents at a time in length order, each
    batch padded to a power-of-two length and to `batch_size` rows (few distinct shapes, so few
    compilations)."""
    gen = gen or student.generation
    pad = student.generation.pad_token_id
    order = sorted((i for i, x in enumerate(encoded.ids) if x is not None), key=lambda i: len(encoded.ids[i]))
    batch_size = max(1, min(batch_size, len(order)))  # a few documents are not padded up to a large batch
    out = [""] * len(encoded.ids)
    tokens, steady_tokens, steady_seconds, shapes = 0, 0, 0.0, set()
    start = time.perf_counter()
    with tqdm(total=len(order), desc="generate", unit="doc", disable=not progress) as bar:
        for b in range(0, len(order), batch_size):
            idx = order[b: b + batch_size]
            rows = [encoded.ids[i] for i in idx] + [encoded.ids[idx[0]]] * (batch_size - len(idx))
            length = bucket(max(len(r) for r in rows), MIN_BUCKET, encoded.max_tokens)
            ids = np.full((batch_size, length), pad, np.int32)  # [B, S]
            mask = np.zeros((batch_size, length), np.int32)
            for r, row in enumerate(rows):
                ids[r, : len(row)], mask[r, : len(row)] = row, 1
            t0 = time.perf_counter()
            res = generate(student.model, student.params, ids, mask, gen)
            seqs, lengths = np.asarray(res.sequences)[: len(idx)], np.asarray(res.lengths)[: len(idx)]
            n = int((lengths - 1).sum())
            tokens += n
            if ids.shape in shapes:  # the first batch of a shape compiles generation for it
                steady_tokens, steady_seconds = steady_tokens + n, steady_seconds + time.perf_counter() - t0
            shapes.add(ids.shape)
            for i, text in zip(idx, decode_texts(student.tokenizer, seqs)):
                out[i] = " ".join(text.splitlines()).strip()  # one line per document
            bar.update(len(idx))
    return Generated(out, tokens, time.perf_counter() - start, steady_tokens, steady_seconds)
