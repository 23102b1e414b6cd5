"""Exports of a trained student: an HF PyTorch directory and a truly packed low-bit file.

The packed file is one safetensors file: for every quantized tensor its integer codes packed
at their bit-width (`<hf name>.codes`, uint8) and its scales (`<hf name>.scales`, fp32), every
other tensor in fp32 under its HF name, and in the metadata the model config, the quant
config, the generation settings and the tokenizer files. Codes and scales are stored in HF's
`[out, in]` layout. Reading it needs numpy and safetensors only (`read_packed`,
`packed_to_hf`); `load_packed` returns Flax params equal bit for bit to the student's
fake-quantized weights.

Learned activation step sizes of TBT students (the `elastic` subtree of the params) are stored
in the packed file as fp32 tensors `elastic.<flax path>` and come back from `load_packed`.
PyTorch's BART has no activation quantizers, so the HF export cannot apply them: it writes them
to `dq_jax.json` beside the weights, with the quant config, and the HF model computes with
full-precision activations.

When the token embedding is quantized but the LM head is not (the reference: lookups use the
quantized table, the output projection the fp32 one), both exports keep a separate fp32
`lm_head.weight` and say so with `tie_word_embeddings=false`; the packed size counts it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from dq_jax import packing, quant_config
from dq_jax.hf import TOKENIZER_FILES, flatten, flax_to_hf_name, save_pretrained, state_dict_to_params, unflatten
from dq_jax.model_config import ModelConfig
from dq_jax.policy import WeightRule, fp32_lm_head_copy, param_rule
from dq_jax.quant_config import ELASTIC, QuantConfig

FORMAT = "dq-jax-packed"
VERSION = 1


class PackedFileError(ValueError):
    """A packed file this dq-jax cannot read: unreadable, not the packed format, or too new."""


class NotPackedError(PackedFileError):
    """A file that is not a dq-jax packed file; `readable`: safetensors could read its header."""

    def __init__(self, message: str, readable: bool):
        super().__init__(message)
        self.readable = readable


def packed_metadata(path: str) -> dict:
    """The header metadata of a packed file, checked (no tensors read): it exists, safetensors
    reads it, its format is ours and its version one this dq-jax reads."""
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
    return meta


def _numpy_codes(value, rule: WeightRule) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and scales of one tensor (Flax layout), exactly as training computes them."""
    codes = rule.codes(np.asarray(value, np.float32))
    return np.asarray(codes.values), np.asarray(codes.scales, np.float32)


def untie_lm_head(cfg: ModelConfig, params: dict, quant: QuantConfig) -> tuple[ModelConfig, dict]:
    """A tied model whose embedding lookups are quantized but whose LM head is not (the
    reference) as an untied one with its own fp32 `lm_head`, so the table can be quantized."""
    if fp32_lm_head_copy(quant) and cfg.tie_word_embeddings:
        params = dict(params, lm_head={"kernel": np.asarray(params["shared"]["embedding"], np.float32).T})
        cfg = cfg.replace(tie_word_embeddings=False)
    return cfg, params


def split_step_sizes(params: dict) -> tuple[dict, dict]:
    """(weights, {flax path string: step size}) of a trainable tree."""
    weights, tree = quant_config.split_elastic(params)
    return weights, {"/".join(p): float(np.asarray(v)) for p, v in flatten(tree or {})}


def join_step_sizes(params: dict, elastic: dict) -> dict:
    """Inverse of `split_step_sizes`."""
    if not elastic:
        return params
    return dict(params, **{ELASTIC: unflatten({tuple(k.split("/")): np.float32(v) for k, v in elastic.items()})})


def fake_quantized_params(params: dict, quant: QuantConfig) -> dict:
    """Params with every quantized tensor replaced by `codes * scales` (numpy, fp32); elastic
    step sizes, if any, are kept as they are."""
    params, elastic = split_step_sizes(params)
    out = {}
    for path, value in flatten(params):
        rule = param_rule(path, np.ndim(value), quant)
        if rule:
            codes, scales = _numpy_codes(value, rule)
            value = codes.astype(np.float32) * scales
        out[path] = np.asarray(value, np.float32)
    return join_step_sizes(unflatten(out), elastic)


def export_hf(cfg: ModelConfig, params: dict, quant: QuantConfig, out_dir: str, tokenizer_dir: str | None = None,
              generation_config: dict | None = None) -> str:
    """HF directory with the student's fake-quantized weights (loads with from_pretrained), and
    `dq_jax.json` with the quant config and any learned activation step sizes."""
    params, elastic = split_step_sizes(params)
    cfg, with_head = untie_lm_head(cfg, params, quant)
    fq = fake_quantized_params(with_head, quant)  # a separate lm_head stays fp32
    save_pretrained(cfg, fq, out_dir, tokenizer_dir, generation_config)
    note = ("PyTorch BART has no activation quantizers: this model computes with full-precision activations. "
            f"The student was trained with {quant.act_bits}-bit activations"
            + (" and the learned step sizes below." if elastic else "."))
    with open(os.path.join(out_dir, "dq_jax.json"), "w") as f:
        json.dump({"quant_config": dataclasses.asdict(quant), "activations": note, "elastic": elastic}, f, indent=2)
    return out_dir


def _tokenizer_payload(tokenizer_dir: str | None) -> dict:
    if not tokenizer_dir:
        return {}
    files = {}
    for name in TOKENIZER_FILES:
        p = os.path.join(tokenizer_dir, name)
        if os.path.exists(p) and name != "sentencepiece.bpe.model":
            with open(p, encoding="utf-8") as f:
                files[name] = f.read()
    return files


def write_packed(cfg: ModelConfig, params: dict, quant: QuantConfig, path: str, tokenizer_dir: str | None = None,
                 generation_config: dict | None = None) -> str:
    from safetensors.numpy import save_file
    params, elastic = split_step_sizes(params)
    cfg, params = untie_lm_head(cfg, params, quant)
    tensors = {f"{ELASTIC}.{k.replace('/', '.')}": np.asarray(v, np.float32) for k, v in elastic.items()}
    entries = {}
    for fpath, value in flatten(params):
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
        entries[name] = {"shape": list(codes.shape), "bits": rule.storage_bits, "kind": rule.kind}
    metadata = {"format": FORMAT, "version": str(VERSION), "model_config": json.dumps(cfg.to_hf_dict()),
                "quant_config": json.dumps(dataclasses.asdict(quant)), "quantized": json.dumps(entries),
                "generation_config": json.dumps(generation_config or {}),
                "tokenizer": json.dumps(_tokenizer_payload(tokenizer_dir))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=metadata)
    return path


def read_packed(path: str) -> tuple[dict, dict, dict[str, np.ndarray], dict]:
    """numpy only: (HF config dict, quant config dict, HF state dict of dequantized fp32 tensors,
    {"generation_config", "tokenizer"})."""
    from safetensors import safe_open
    meta = packed_metadata(path)
    try:
        with safe_open(path, framework="np") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a header that reads over a truncated body
        raise PackedFileError(f"{path} is not a readable packed file (truncated or corrupt?): {e}") from e
    entries = json.loads(meta["quantized"])
    elastic = {k[len(ELASTIC) + 1:].replace(".", "/"): float(v) for k, v in raw.items() if k.startswith(ELASTIC + ".")}
    sd = {k: v for k, v in raw.items() if not k.endswith((".codes", ".scales")) and not k.startswith(ELASTIC + ".")}
    for name, e in entries.items():
        codes = packing.unpack(raw[name + ".codes"], e["bits"], tuple(e["shape"]))
        sd[name] = codes.astype(np.float32) * raw[name + ".scales"]
    hf_cfg = json.loads(meta["model_config"])
    if not hf_cfg.get("tie_word_embeddings", True):  # HF keeps untied input embeddings as copies
        for key in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"):
            sd[key] = sd["model.shared.weight"]
    extra = {"generation_config": json.loads(meta["generation_config"]), "tokenizer": json.loads(meta["tokenizer"]),
             "elastic": elastic}
    return hf_cfg, json.loads(meta["quant_config"]), sd, extra


def load_packed(path: str) -> tuple[ModelConfig, QuantConfig, dict]:
    """(model config, quant config, Flax params = the student's fake-quantized weights, with the
    learned activation step sizes under `elastic` if it has any)."""
    hf_cfg, qcfg, sd, extra = read_packed(path)
    cfg = ModelConfig.from_hf_dict(hf_cfg)
    params = state_dict_to_params(sd, tied=cfg.tie_word_embeddings)
    return cfg, QuantConfig.from_dict(qcfg), join_step_sizes(params, extra["elastic"])


def packed_to_hf(path: str, out_dir: str) -> str:
    """An HF PyTorch directory from a packed file, with numpy and safetensors only."""
    from safetensors.numpy import save_file
    hf_cfg, _, sd, extra = read_packed(path)
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)
    if extra["generation_config"]:
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(extra["generation_config"], f, indent=2, sort_keys=True)
    for name, text in extra["tokenizer"].items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(text)
    return out_dir
