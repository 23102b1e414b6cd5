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

from dq_jax.model import hf_layout
from dq_jax.model.config import ModelConfig
from dq_jax.model.hf_layout import flatten, flax_to_hf_name, hf_to_flax_name, join_step_sizes
from dq_jax.quant import packing
from dq_jax.quant.config import ELASTIC, QuantConfig, split_elastic
from dq_jax.quant.policy import Role, WeightRule, component_of, param_rule

FORMAT = "dq-jax-packed"
VERSION = 1
# safetensors writes tensors in this dtype order (then by name), which decides their offsets.
_DTYPE_ORDER = {"F32": 0, "U8": 1}
_ITEMSIZE = {"F32": 4, "U8": 1}
_HEAD = ("lm_head", "kernel")
_HEAD_COPY = "LM head (fp32 copy)"


class PackedFileError(ValueError):
    """A packed file this dq-jax cannot read: unreadable, not the packed format, or too new."""


class NotPackedError(PackedFileError):
    """A file that is not a dq-jax packed file; `readable`: safetensors could read its header."""

    def __init__(self, message: str, readable: bool):
        super().__init__(message)
        self.readable = readable


@dataclasses.dataclass(frozen=True)
class Extras:
    """What the header carries besides the model: the tokenizer's files (read from
    `tokenizer_dir`), the generation settings and the precision the student trained in."""

    tokenizer_dir: str | None = None
    generation_config: dict | None = None
    precision: str = "fp32"


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
        return int(np.prod(self.shape, dtype=np.int64)) * _ITEMSIZE[self.dtype]


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


def _plan(cfg: ModelConfig, trainable, quant: QuantConfig | None) -> tuple[ModelConfig, list[Stored], dict]:
    """What the file stores for a student of these shapes (arrays or `jax.ShapeDtypeStruct`s):
    the (untied where needed) config, every tensor, and the header's index of quantized ones."""
    weights, elastic = split_elastic(trainable)
    elastic = elastic or {}
    shapes = {p: tuple(int(d) for d in np.shape(v)) for p, v in flatten(weights)}
    head_copy = hf_layout.needs_lm_head_copy(cfg, quant)
    if head_copy:
        shapes[_HEAD] = shapes[("shared", "embedding")][::-1]
        cfg = cfg.replace(tie_word_embeddings=False)
    stored = [Stored(f"{ELASTIC}.{'.'.join(p)}", "F32", (), Role.STEP_SIZE.value, 1, 32) for p, _ in flatten(elastic)]
    entries = {}
    # the LM-head copy last, as size reports list it
    for path, shape in sorted(shapes.items(), key=lambda kv: (head_copy and kv[0] == _HEAD, kv[0])):
        name, transposed = flax_to_hf_name(path)
        hf = (lambda s: s[::-1]) if transposed else (lambda s: s)
        n, rule = int(np.prod(shape, dtype=np.int64)), param_rule(path, len(shape), quant)
        component = _HEAD_COPY if head_copy and path == _HEAD else component_of(path, len(shape))
        if rule is None:
            stored.append(Stored(name, "F32", hf(shape), component, n, 32))
            continue
        scales, bits = _scales_shape(shape, rule), rule.storage_bits
        stored.append(Stored(f"{name}.codes", "U8", (packing.packed_nbytes(n, bits),), component, n, bits))
        stored.append(Stored(f"{name}.scales", "F32", hf(scales), "scales", int(np.prod(scales)), 32))
        entries[name] = {"shape": list(hf(shape)), "bits": bits, "kind": rule.kind}
    return cfg, stored, entries


def tokenizer_files(tokenizer_dir: str | None) -> dict[str, str]:
    """The tokenizer files the file carries (text files only: a sentencepiece model is binary)."""
    files = {}
    for name in hf_layout.TOKENIZER_FILES if tokenizer_dir and os.path.isdir(tokenizer_dir) else ():
        p = os.path.join(tokenizer_dir, name)
        if os.path.exists(p) and name != "sentencepiece.bpe.model":
            with open(p, encoding="utf-8") as f:
                files[name] = f.read()
    return files


def _metadata(cfg: ModelConfig, quant: QuantConfig, entries: dict, extras: Extras) -> dict[str, str]:
    return {
        "format": FORMAT,
        "version": str(VERSION),
        "model_config": json.dumps(cfg.to_hf_dict()),
        "quant_config": json.dumps(dataclasses.asdict(quant)),
        "precision": extras.precision,
        "quantized": json.dumps(entries),
        "generation_config": json.dumps(extras.generation_config or {}),
        "tokenizer": json.dumps(tokenizer_files(extras.tokenizer_dir)),
    }


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


def file_bytes(cfg: ModelConfig, trainable, quant: QuantConfig, extras: Extras | None = None) -> int:
    """The size of the file `write` writes for a student of these shapes (arrays or
    `jax.ShapeDtypeStruct`s) and extras, to the byte: 8 + header + tensors."""
    stored_cfg, stored, entries = _plan(cfg, trainable, quant)
    meta = _metadata(stored_cfg, quant, entries, extras or Extras())
    return 8 + _header_bytes(stored, meta) + sum(s.nbytes for s in stored)


def components(cfg: ModelConfig, trainable, quant: QuantConfig | None) -> list[dict]:
    """The file's tensor bytes by component (elements, stored bits, bytes, MiB): codes at their
    storage width, fp32 scales, fp32 for everything unquantized, the fp32 LM-head copy, step sizes."""
    rows: dict[str, dict] = {}
    for s in _plan(cfg, trainable, quant)[1]:
        r = rows.setdefault(s.component, {"component": s.component, "elements": 0, "bytes": 0, "bits": s.bits})
        r["elements"] += s.elements
        r["bytes"] += s.nbytes
    return [dict(r, mib=r["bytes"] / 2**20) for r in rows.values()]


def write(cfg: ModelConfig, params: dict, quant: QuantConfig, path: str, extras: Extras | None = None) -> str:
    """The packed file of a student's master `params` (with any `elastic` step sizes) at `path`."""
    from safetensors.numpy import save_file

    stored_cfg, _, entries = _plan(cfg, params, quant)
    weights, elastic = hf_layout.split_step_sizes(params)
    _, weights = hf_layout.untie_lm_head(cfg, weights, quant)
    tensors = {f"{ELASTIC}.{k.replace('/', '.')}": np.asarray(v, np.float32) for k, v in elastic.items()}
    for fpath, value in flatten(weights):
        name, transposed = flax_to_hf_name(fpath)
        rule = param_rule(fpath, np.ndim(value), quant)
        if rule is None:
            value = np.asarray(value, np.float32)
            tensors[name] = np.ascontiguousarray(value.T if transposed else value)
            continue
        codes = rule.codes(np.asarray(value, np.float32))  # exactly as training quantizes it
        values, scales = np.asarray(codes.values), np.asarray(codes.scales, np.float32)
        if transposed:
            values, scales = values.T, scales.T
        tensors[f"{name}.codes"] = packing.pack(values, rule.storage_bits)
        tensors[f"{name}.scales"] = np.ascontiguousarray(scales)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=_metadata(stored_cfg, quant, entries, extras or Extras()))
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
        raise PackedFileError(
            f"{path} has packed format version {version}, newer than this dq-jax reads ({VERSION}); upgrade dq-jax."
        )
    try:
        return Header(
            json.loads(meta["model_config"]),
            QuantConfig.from_dict(json.loads(meta["quant_config"])),
            meta.get("precision", "fp32"),
            json.loads(meta["quantized"]),
            json.loads(meta["generation_config"]),
            json.loads(meta["tokenizer"]),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise PackedFileError(f"{path} has a damaged packed header ({type(e).__name__}: {e}).") from e


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except Exception as e:  # a header that reads over a truncated body
        raise PackedFileError(f"{path} is not a readable packed file (truncated or corrupt?): {e}") from e


def _step_sizes(raw: dict[str, np.ndarray]) -> dict[str, float]:
    prefix = ELASTIC + "."
    return {k[len(prefix) :].replace(".", "/"): float(v) for k, v in raw.items() if k.startswith(prefix)}


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
    params = hf_layout.state_dict_to_params(sd, tied=cfg.tie_word_embeddings)
    return cfg, header.quant, join_step_sizes(params, elastic)


def to_hf(path: str, out_dir: str) -> str:
    """An HF PyTorch directory from a packed file, with numpy and safetensors only."""
    from safetensors.numpy import save_file

    header, sd, _ = read_state_dict(path)
    os.makedirs(out_dir, exist_ok=True)
    weights = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    files = {"config.json": json.dumps(header.model_config, indent=2, sort_keys=True)}
    if header.generation_config:
        files["generation_config.json"] = json.dumps(header.generation_config, indent=2, sort_keys=True)
    for name, text in {**files, **header.tokenizer}.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(text)
    return out_dir


def _codes(name: str, entry: dict, packed_values: np.ndarray, scales: np.ndarray, quant: QuantConfig):
    """One stored tensor (HF `[out, in]` layout) -> (its Flax path, int8 `Codes` in Flax layout),
    checked against what the quant config gives that tensor."""
    import jax

    from dq_jax.quant.codes import Codes

    fpath, transposed = hf_to_flax_name(name)
    values = packing.unpack(packed_values, entry["bits"], tuple(entry["shape"]))  # int8, HF layout
    if transposed:
        values, scales = values.T, scales.T
    rule = param_rule(fpath, values.ndim, quant)
    if rule is None or (rule.kind, rule.storage_bits) != (entry["kind"], entry["bits"]):
        raise PackedFileError(
            f"{name} is stored as {entry['kind']} at {entry['bits']} bits, but its quant config "
            f"quantizes it as {rule and (rule.kind, rule.storage_bits)}."
        )
    like = jax.eval_shape(rule.codes, jax.ShapeDtypeStruct(values.shape, np.float32))  # bits and axes, from shapes
    if like.scales.shape != scales.shape:
        raise PackedFileError(f"{name}.scales has shape {scales.shape}, expected {like.scales.shape}.")
    values, scales = np.ascontiguousarray(values, np.int8), np.ascontiguousarray(scales, np.float32)
    return fpath, Codes(values, scales, like.bits, like.axes)


def read_codes(path: str) -> tuple[ModelConfig, Header, dict]:
    """(config, header, Flax params with every quantized weight as int8 `Codes` in Flax layout and
    the rest as stored), equal to quantizing the master params once. numpy arrays; the fp32
    weights of quantized tensors never exist."""
    from dq_jax.model.hf import check_params

    header = read_header(path)
    try:
        cfg = ModelConfig.from_hf_dict(header.model_config)
        raw = _read_tensors(path)
        items = {}
        for key, value in raw.items():
            if key.endswith(".codes"):
                name = key[: -len(".codes")]
                fpath, codes = _codes(name, header.entries[name], value, raw[name + ".scales"], header.quant)
                items[fpath] = codes
            elif not key.startswith(ELASTIC + ".") and not key.endswith(".scales"):
                fpath, transposed = hf_to_flax_name(key)
                items[fpath] = np.ascontiguousarray(value.T) if transposed else value
    except PackedFileError:
        raise
    except Exception as e:  # a truncated or edited file fails in safetensors, json or packing
        raise PackedFileError(f"{path} is not a readable packed file (truncated or corrupt?): {e}") from e
    params = hf_layout.unflatten(items)
    check_params(cfg, params, source=path)  # every tensor the config implies, at its shape (Codes too)
    return cfg, header, join_step_sizes(params, _step_sizes(raw))
