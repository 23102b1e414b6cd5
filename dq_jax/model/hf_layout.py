"""How an HF BART/mBART checkpoint is laid out, in numpy only: tensor names <-> Flax param paths,
the tied copies of the embedding, the tokenizer files, and param trees <-> flat `{path: array}`.

Names map one to one: `model.encoder.layers.0.fc1.weight` <-> `encoder/layers_0/fc1/kernel`
(transposed). Nothing here imports JAX: packed files are converted where it is not installed.
"""

from __future__ import annotations

import re

import numpy as np

from dq_jax.model.config import ModelConfig
from dq_jax.quant.config import ELASTIC, QuantConfig, split_elastic
from dq_jax.quant.policy import fp32_lm_head_copy

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)
# Copies of `model.shared.weight` that older checkpoints store under their own names.
TIED = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")


def hf_to_flax_name(name: str) -> tuple[tuple[str, ...], bool]:
    """HF tensor name -> (Flax param path, whether the tensor is transposed)."""
    if name == "final_logits_bias":
        return ("final_logits_bias",), False
    if name == "lm_head.weight":
        return ("lm_head", "kernel"), True
    parts = name.removeprefix("model.").split(".")
    parts = [f"layers_{p}" if prev == "layers" else p for prev, p in zip([""] + parts, parts)]
    parts = [p for p in parts if p != "layers"]
    leaf, owner = parts[-1], parts[-2]
    if owner in ("shared", "embed_positions"):
        return (*parts[:-1], "embedding"), False
    if "layer_norm" in owner or owner == "layernorm_embedding":
        return (*parts[:-1], "scale" if leaf == "weight" else "bias"), False
    return (*parts[:-1], "kernel" if leaf == "weight" else "bias"), leaf == "weight"


def flax_to_hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """Flax param path -> (HF tensor name, whether the tensor is transposed)."""
    if path == ("final_logits_bias",):
        return "final_logits_bias", False
    if path == ("lm_head", "kernel"):
        return "lm_head.weight", True
    parts = [f"layers.{p[7:]}" if re.fullmatch(r"layers_\d+", p) else p for p in path[:-1]]
    leaf = path[-1]
    name = "model." + ".".join(parts) + "." + ("bias" if leaf == "bias" else "weight")
    return name, leaf == "kernel"


def state_dict_to_params(sd: dict[str, np.ndarray], tied: bool = True) -> dict:
    """HF state dict (numpy) -> nested Flax params; tied copies are dropped (or used if alone).
    An untied model (`tie_word_embeddings=False`) keeps its own `lm_head.weight`."""
    sd = dict(sd)
    if "model.shared.weight" not in sd:
        for key in TIED:
            if key in sd:
                sd["model.shared.weight"] = sd[key]
                break
    if not tied:
        for key in TIED[:2]:
            if key in sd and not np.array_equal(sd[key], sd["model.shared.weight"]):
                raise ValueError(
                    f"{key} differs from model.shared.weight; dq-jax models share one input "
                    "embedding between encoder and decoder."
                )
    items = {}
    for name, value in sd.items():
        if name in TIED and (tied or name != "lm_head.weight"):
            continue
        path, transpose = hf_to_flax_name(name)
        items[path] = np.ascontiguousarray(value.T) if transpose else value
    return unflatten(items)


def params_to_state_dict(params: dict, tied: bool = True) -> dict[str, np.ndarray]:
    """Nested Flax params -> HF state dict, with exactly the keys `save_pretrained` writes
    (an untied HF model stores its encoder and decoder input embeddings separately)."""
    sd = {}
    for path, value in flatten(params):
        name, transpose = flax_to_hf_name(path)
        value = np.asarray(value)
        sd[name] = np.ascontiguousarray(value.T) if transpose else value
    if not tied:
        for key in TIED[:2]:
            sd[key] = sd["model.shared.weight"]
    return sd


def flatten(tree: dict, prefix=()):
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            yield from flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def unflatten(items) -> dict:
    """Inverse of `flatten`: `{(a, b, c): v}` or pairs -> nested dict."""
    out: dict = {}
    for path, value in items.items() if isinstance(items, dict) else items:
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def needs_lm_head_copy(cfg: ModelConfig, quant: QuantConfig | None) -> bool:
    """A tied model whose embedding lookups are quantized but whose LM head is not (the
    reference) is stored untied, with its own fp32 `lm_head`, so the table can be quantized."""
    return fp32_lm_head_copy(quant) and cfg.tie_word_embeddings


def untie_lm_head(cfg: ModelConfig, params: dict, quant: QuantConfig | None) -> tuple[ModelConfig, dict]:
    """A tied model whose embedding lookups are quantized but whose LM head is not (the
    reference) as an untied one with its own fp32 `lm_head`, so the table can be quantized."""
    if needs_lm_head_copy(cfg, quant):
        params = dict(params, lm_head={"kernel": np.asarray(params["shared"]["embedding"], np.float32).T})
        cfg = cfg.replace(tie_word_embeddings=False)
    return cfg, params


def split_step_sizes(params: dict) -> tuple[dict, dict[str, float]]:
    """(weights, {flax path string: step size}) of a trainable tree: how dq_jax.json and packed
    files store TBT's learned activation step sizes."""
    weights, tree = split_elastic(params)
    return weights, {"/".join(p): float(np.asarray(v)) for p, v in flatten(tree or {})}


def join_step_sizes(params: dict, elastic: dict[str, float]) -> dict:
    """Inverse of `split_step_sizes`."""
    if not elastic:
        return params
    return dict(params, **{ELASTIC: unflatten({tuple(k.split("/")): np.float32(v) for k, v in elastic.items()})})
