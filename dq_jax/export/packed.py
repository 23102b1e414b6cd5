"""The packed low-bit file of a student: the one module that writes it, reads its header and its
codes, and gives its size.

One safetensors file holds:
- for every quantized tensor, its integer codes packed at their storage bits (`<hf name>.codes`,
  uint8, `dq_jax.quant.packing`) and its scales (`<hf name>.scales`, fp32), in HF's `[out, in]` layout;
- every other tensor in fp32 under its HF name, the fp32 LM-head copy of a student whose
  embedding is quantized but whose head is not included (`tie_word_embeddings=false`);
- TBT's learned activation step sizes as fp32 scalars `elastic.<flax path, dots for slashes>`;
- in the metadata: format and version, the model config, the quant config, the precision the
  student was trained in, the quantized entries (shape, storage bits, kind), the generation
  settings and the tokenizer files.

Reading the header, the dequantized tensors (`load`, `to_hf`) or the size needs numpy and
safetensors only; `read_codes` builds `Codes` and so needs JAX.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from dq_jax.quant import packing
from dq_jax.model.hf_layout import (TOKENIZER_FILES, flatten, flax_to_hf_name, hf_to_flax_name, join_step_sizes,
                              needs_lm_head_copy, split_step_sizes, state_dict_to_params, unflatten, untie_lm_head)
from dq_jax.model.config import ModelConfig
from dq_jax.quant.policy import Role, WeightRule, component_of, param_rule
from dq_jax.quant.config import ELASTIC, QuantConfig, split_elastic

FORMAT = "dq-jax-packed"
VERSION = 1
PRECISIONS = ("fp32", "bf16")
# safetensors writes tensors in this dtype order (then by name), which decides their offsets.
_DTYPE_ORDER = {"F32": 0, "U8": 1}
_NUMPY = {"F32": np.float32, "U8": np.uint8}
_HEAD = ("lm_head", "kernel")


class PackedFileError(ValueError):
    """A packed file this dq-jax cannot read: unreadable, not the packed format, or too new."""


class NotPackedError(PackedFileError):
    """A file that is not a dq-jax packed file; `readable`: safetensors could read its header."""

    def __init__(self, message: str, readable: bool):
        super().__init__(message)
        self.readable = readable


@dataclasses.dataclass(frozen=True)
class Stored:
    """One tensor of the file: its key, dtype and shape, and what it stands for in a size report
    (`component`, the `elements` of the model tensor, stored at `bits` each)."""

    name: str
    dtype: str  # F32 | U8
    shape: tuple[int, ...]
    component: str
    elements: int
    bits: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(_NUMPY[self.dtype]).itemsize


@dataclasses.dataclass(frozen=True)
class Header:
    """A packed file's metadata, parsed."""

    model_config: dict  # the HF config.json of the stored (untied where needed) model
    quant: QuantConfig
    precision: str
    entries: dict  # HF name of a quantized tensor -> {"shape", "bits", "kind"}
    generation_config: dict
    tokenizer: dict  # file name -> text


def _scales_shape(shape: tuple[int, ...], rule: WeightRule) -> tuple[int, ...]:
    """The keepdims shape of a tensor's scales (Flax layout): 1 along the axes they reduce over."""
    axes = range(len(shape)) if rule.reduce_axes is None else {a % len(shape) for a in rule.reduce_axes}
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


@dataclasses.dataclass(frozen=True)
class _Student:
    """The shapes a file stores for a student: its (untied where needed) config, each weight's
    Flax path and shape, and the Flax paths of its step sizes."""

    cfg: ModelConfig
    shapes: dict[tuple[str, ...], tuple[int, ...]]
    step_sizes: tuple[tuple[str, ...], ...]
    head_copy: bool  # `lm_head` is the fp32 copy of the embedding the file adds

    @classmethod
    def of(cls, cfg: ModelConfig, trainable, quant: QuantConfig | None) -> "_Student":
        """From a trainable tree of arrays or shapes (`jax.ShapeDtypeStruct`s)."""
        weights, elastic = split_elastic(trainable)
        shapes = {p: tuple(int(d) for d in np.shape(v)) for p, v in flatten(weights)}
        copy = needs_lm_head_copy(cfg, quant)
        if copy:
            shapes[_HEAD] = shapes[("shared", "embedding")][::-1]
            cfg = cfg.replace(tie_word_embeddings=False)
        return cls(cfg, shapes, tuple(p for p, _ in flatten(elastic or {})), copy)

    def layout(self, quant: QuantConfig | None) -> list[Stored]:
        """Codes and scales of each quantized tensor, every other tensor in fp32, the step sizes."""
        out = [Stored(f"{ELASTIC}.{'.'.join(p)}", "F32", (), Role.STEP_SIZE.value, 1, 32) for p in self.step_sizes]
        # the LM-head copy last, as size reports list it
        for path, shape in sorted(self.shapes.items(), key=lambda kv: (self.head_copy and kv[0] == _HEAD, kv[0])):
            name, transposed = flax_to_hf_name(path)
            n = int(np.prod(shape, dtype=np.int64))
            rule = param_rule(path, len(shape), quant)
            if rule is None:
                copy = self.head_copy and path == _HEAD
                out.append(Stored(name, "F32", shape[::-1] if transposed else shape,
                                  "LM head (fp32 copy)" if copy else component_of(path, len(shape)), n, 32))
                continue
            scales = _scales_shape(shape, rule)
            out.append(Stored(name + ".codes", "U8", (packing.packed_nbytes(n, rule.storage_bits),),
                              component_of(path, len(shape)), n, rule.storage_bits))
            out.append(Stored(name + ".scales", "F32", scales[::-1] if transposed else scales, "scales",
                              int(np.prod(scales)), 32))
        return out

    def entries(self, quant: QuantConfig | None) -> dict:
        """The header's index of quantized tensors: HF name -> shape (HF layout), storage bits, kind."""
        out = {}
        for path, shape in sorted(self.shapes.items()):
            rule = param_rule(path, len(shape), quant)
            if rule is not None:
                name, transposed = flax_to_hf_name(path)
                out[name] = {"shape": list(shape[::-1] if transposed else shape), "bits": rule.storage_bits,
                             "kind": rule.kind}
        return out


def _metadata(student: _Student, quant: QuantConfig, generation_config: dict | None, tokenizer_dir: str | None,
              precision: str) -> dict[str, str]:
    return {"format": FORMAT, "version": str(VERSION), "model_config": json.dumps(student.cfg.to_hf_dict()),
            "quant_config": json.dumps(dataclasses.asdict(quant)), "precision": precision,
            "quantized": json.dumps(student.entries(quant)), "generation_config": json.dumps(generation_config or {}),
            "tokenizer": json.dumps(tokenizer_files(tokenizer_dir))}


def tokenizer_files(tokenizer_dir: str | None) -> dict[str, str]:
    """The tokenizer files the file carries (text files only: a sentencepiece model is binary)."""
    if not tokenizer_dir or not os.path.isdir(tokenizer_dir):
        return {}
    files = {}
    for name in TOKENIZER_FILES:
        p = os.path.join(tokenizer_dir, name)
        if os.path.exists(p) and name != "sentencepiece.bpe.model":
            with open(p, encoding="utf-8") as f:
                files[name] = f.read()
    return files


def _header_bytes(stored: list[Stored], metadata: dict[str, str]) -> int:
    """The length of the safetensors header of these tensors and metadata, as safetensors writes
    it: compact JSON (non-ASCII as UTF-8), tensors by dtype then name with their data offsets,
    padded with spaces to a multiple of 8."""
    header, offset = {"__metadata__": metadata}, 0
    for s in sorted(stored, key=lambda s: (_DTYPE_ORDER[s.dtype], s.name)):
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    n = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return n + (-n % 8)


def file_bytes(cfg: ModelConfig, trainable, quant: QuantConfig, tokenizer_dir: str | None = None,
               generation_config: dict | None = None, precision: str = "fp32") -> int:
    """The size of the file `write` writes for a student of these shapes (arrays or
    `jax.ShapeDtypeStruct`s) and settings, to the byte: 8 + header + tensors."""
    student = _Student.of(cfg, trainable, quant)
    stored = student.layout(quant)
    meta = _metadata(student, quant, generation_config, tokenizer_dir, precision)
    return 8 + _header_bytes(stored, meta) + sum(s.nbytes for s in stored)


def components(cfg: ModelConfig, trainable, quant: QuantConfig | None) -> list[dict]:
    """The file's tensor bytes by component (elements, stored bits, bytes, MiB): codes at their
    storage width, fp32 scales, fp32 for everything unquantized, the fp32 LM-head copy, step sizes."""
    rows: dict[str, dict] = {}
    for s in _Student.of(cfg, trainable, quant).layout(quant):
        r = rows.setdefault(s.component, {"component": s.component, "elements": 0, "bytes": 0, "bits": s.bits})
        r["elements"] += s.elements
        r["bytes"] += s.nbytes
    for r in rows.values():
        r["mib"] = r["bytes"] / 2 ** 20
    return list(rows.values())


def _numpy_codes(value, rule: WeightRule) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and scales of one tensor (Flax layout), exactly as training computes them."""
    codes = rule.codes(np.asarray(value, np.float32))
    return np.asarray(codes.values), np.asarray(codes.scales, np.float32)


def write(cfg: ModelConfig, params: dict, quant: QuantConfig, path: str, tokenizer_dir: str | None = None,
          generation_config: dict | None = None, precision: str = "fp32") -> str:
    """The packed file of a student's master `params` (with any `elastic` step sizes) at `path`."""
    from safetensors.numpy import save_file
    student = _Student.of(cfg, params, quant)
    weights, elastic = split_step_sizes(params)
    _, weights = untie_lm_head(cfg, weights, quant)
    tensors = {f"{ELASTIC}.{k.replace('/', '.')}": np.asarray(v, np.float32) for k, v in elastic.items()}
    for fpath, value in flatten(weights):
        name, transposed = flax_to_hf_name(fpath)
        rule = param_rule(fpath, np.ndim(value), quant)
        if rule is None:
            value = np.asarray(value, np.float32)
            tensors[name] = np.ascontiguousarray(value.T if transposed else value)
            continue
        codes, scales = _numpy_codes(value, rule)
        if transposed:
            codes, scales = codes.T, scales.T
        tensors[name + ".codes"] = packing.pack(codes, rule.storage_bits)
        tensors[name + ".scales"] = np.ascontiguousarray(scales)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=_metadata(student, quant, generation_config, tokenizer_dir, precision))
    return path


def read_header(path: str) -> Header:
    """The file's header, checked (no tensors read): it exists, safetensors reads it, its format
    is ours and its version one this dq-jax reads. Files written before the precision was
    recorded are fp32."""
    from safetensors import safe_open
    if not os.path.exists(path):
        raise FileNotFoundError(f"Packed file {path} does not exist.")
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors reports truncation and garbage as various errors
        raise NotPackedError(f"{path} is not a readable packed file (truncated or corrupt?): {e}", False) from e
    if meta.get("format") != FORMAT:
        raise NotPackedError(f"{path} is not a dq-jax packed file (format={meta.get('format')!r}).", True)
    version = int(meta.get("version", "0"))
    if version > VERSION:
        raise PackedFileError(f"{path} has packed format version {version}, newer than this dq-jax reads "
                              f"({VERSION}); upgrade dq-jax.")
    try:
        return Header(json.loads(meta["model_config"]), QuantConfig.from_dict(json.loads(meta["quant_config"])),
                      meta.get("precision", "fp32"), json.loads(meta["quantized"]),
                      json.loads(meta["generation_config"]), json.loads(meta["tokenizer"]))
    except (KeyError, ValueError, TypeError) as e:
        raise PackedFileError(f"{path} has a damaged packed header ({type(e).__name__}: {e}).") from e


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open
    try:
        with safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a header that reads over a truncated body
        raise PackedFileError(f"{path} is not a readable packed file (truncated or corrupt?): {e}") from e


def _step_sizes(raw: dict[str, np.ndarray]) -> dict[str, float]:
    prefix = ELASTIC + "."
    return {k[len(prefix):].replace(".", "/"): float(v) for k, v in raw.items() if k.startswith(prefix)}


def read_state_dict(path: str) -> tuple[Header, dict[str, np.ndarray], dict[str, float]]:
    """numpy only: (header, HF state dict of dequantized fp32 tensors, learned step sizes)."""
    header = read_header(path)
    raw = _read_tensors(path)
    sd = {k: v for k, v in raw.items() if not k.endswith((".codes", ".scales")) and not k.startswith(ELASTIC + ".")}
    for name, e in header.entries.items():
        codes = packing.unpack(raw[name + ".codes"], e["bits"], tuple(e["shape"]))
        sd[name] = codes.astype(np.float32) * raw[name + ".scales"]
    if not header.model_config.get("tie_word_embeddings", True):  # HF keeps untied input embeddings as copies
        for key in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"):
            sd[key] = sd["model.shared.weight"]
    return header, sd, _step_sizes(raw)


def load(path: str) -> tuple[ModelConfig, QuantConfig, dict]:
    """(model config, quant config, Flax params = the student's fake-quantized weights, with the
    learned activation step sizes under `elastic` if it has any)."""
    header, sd, elastic = read_state_dict(path)
    cfg = ModelConfig.from_hf_dict(header.model_config)
    params = state_dict_to_params(sd, tied=cfg.tie_word_embeddings)
    return cfg, header.quant, join_step_sizes(params, elastic)


def to_hf(path: str, out_dir: str) -> str:
    """An HF PyTorch directory from a packed file, with numpy and safetensors only."""
    from safetensors.numpy import save_file
    header, sd, _ = read_state_dict(path)
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(header.model_config, f, indent=2, sort_keys=True)
    if header.generation_config:
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(header.generation_config, f, indent=2, sort_keys=True)
    for name, text in header.tokenizer.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(text)
    return out_dir


def read_codes(path: str) -> tuple[ModelConfig, Header, dict]:
    """(config, header, Flax params with every quantized weight as int8 `Codes` in Flax layout and
    the rest as stored), equal to quantizing the master params once. numpy arrays; the fp32
    weights of quantized tensors never exist."""
    import jax

    from dq_jax.quant.codes import Codes
    from dq_jax.model.hf import check_params
    header = read_header(path)
    try:
        cfg = ModelConfig.from_hf_dict(header.model_config)
        raw = _read_tensors(path)
        items = {}
        for key, value in raw.items():
            if key.startswith(ELASTIC + ".") or key.endswith(".scales"):
                continue
            if key.endswith(".codes"):
                name = key[: -len(".codes")]
                entry = header.entries[name]
                fpath, transposed = hf_to_flax_name(name)
                values = packing.unpack(value, entry["bits"], tuple(entry["shape"]))  # int8, HF layout
                scales = raw[name + ".scales"]
                if transposed:
                    values, scales = values.T, scales.T
                rule = param_rule(fpath, values.ndim, header.quant)
                if rule is None or (rule.kind, rule.storage_bits) != (entry["kind"], entry["bits"]):
                    raise PackedFileError(f"{name} is stored as {entry['kind']} at {entry['bits']} bits, but its "
                                          f"quant config quantizes it as {rule and (rule.kind, rule.storage_bits)}.")
                # bits and axes exactly as the quantizer gives them, from shapes alone
                like = jax.eval_shape(rule.codes, jax.ShapeDtypeStruct(values.shape, np.float32))
                if like.scales.shape != scales.shape:
                    raise PackedFileError(f"{name}.scales has shape {scales.shape}, expected {like.scales.shape}.")
                items[fpath] = Codes(np.ascontiguousarray(values, np.int8), np.ascontiguousarray(scales, np.float32),
                                     like.bits, like.axes)
            else:
                fpath, transposed = hf_to_flax_name(key)
                items[fpath] = np.ascontiguousarray(value.T) if transposed else value
    except PackedFileError:
        raise
    except Exception as e:  # a truncated or edited file fails in safetensors, json or packing
        raise PackedFileError(f"{path} is not a readable packed file (truncated or corrupt?): {e}") from e
    params = unflatten(items)
    check_params(cfg, params, source=path)  # every tensor the config implies, at its shape (Codes too)
    return cfg, header, join_step_sizes(params, _step_sizes(raw))
