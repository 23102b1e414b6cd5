"""Hugging Face checkpoints <-> (ModelConfig, plain nested-dict Flax params).

Reading and writing safetensors needs numpy only; `pytorch_model.bin` needs torch. Names map
one to one: `model.encoder.layers.0.fc1.weight` <-> `encoder/layers_0/fc1/kernel` (transposed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import numpy as np

from dq_jax.model_config import ModelConfig

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "sentencepiece.bpe.model", "added_tokens.json",
)
# Copies of `model.shared.weight` that older checkpoints store under their own names.
_TIED = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


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
        for key in _TIED:
            if key in sd:
                sd["model.shared.weight"] = sd[key]
                break
    if not tied:
        for key in _TIED[:2]:
            if key in sd and not np.array_equal(sd[key], sd["model.shared.weight"]):
                raise ValueError(f"{key} differs from model.shared.weight; dq-jax models share one input "
                                 "embedding between encoder and decoder.")
    items = {}
    for name, value in sd.items():
        if name in _TIED and (tied or name != "lm_head.weight"):
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
        for key in _TIED[:2]:
            sd[key] = sd["model.shared.weight"]
    return sd


def flatten(tree: dict, prefix=()):
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            yield from flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def resolve(path_or_hub_id: str, weights: bool = True) -> str:
    """A local directory, or a hub id downloaded to the HF cache: config and tokenizer files, and
    the weights unless `weights=False` (what the checks before a run need)."""
    if os.path.isdir(path_or_hub_id):
        return path_or_hub_id
    if os.path.sep in path_or_hub_id.strip("/") and not re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_hub_id):
        raise FileNotFoundError(f"Teacher checkpoint {path_or_hub_id!r} is not a directory.")
    try:
        from huggingface_hub import snapshot_download
        patterns = ["*.json", "*.txt", "*.model"] + (["*.safetensors", "pytorch_model.bin"] if weights else [])
        return snapshot_download(path_or_hub_id, allow_patterns=patterns)
    except Exception as e:  # offline, unknown repo, auth: one message that says which and why
        raise FileNotFoundError(
            f"{path_or_hub_id!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}: {e}). Pass a local HF checkpoint directory.") from e


def load_state_dict(directory: str) -> dict[str, np.ndarray]:
    st = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(st) or os.path.exists(index):
        from safetensors.numpy import load_file
        files = ([st] if os.path.exists(st) else
                 sorted({os.path.join(directory, f) for f in json.load(open(index))["weight_map"].values()}))
        sd = {}
        for f in files:
            sd.update(load_file(f))
        return sd
    binary = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(binary):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{binary} is a PyTorch pickle and needs torch to read; install torch or "
                              "convert the checkpoint to safetensors.") from e
        sd = torch.load(binary, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in sd.items()}
    raise FileNotFoundError(f"No weights in {directory}: expected one of {_WEIGHTS}.")


def load_model_config(directory: str) -> ModelConfig:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no config.json; it is not a Hugging Face checkpoint.")
    with open(path) as f:
        return ModelConfig.from_hf_dict(json.load(f))


def load_pretrained(path_or_hub_id: str) -> tuple[ModelConfig, dict]:
    """Returns `(config, params)`, params a nested dict of numpy arrays in Flax layout."""
    directory = resolve(path_or_hub_id)
    cfg = load_model_config(directory)
    params = state_dict_to_params(load_state_dict(directory), tied=cfg.tie_word_embeddings)
    if "final_logits_bias" not in params:  # HF treats it as an optional buffer
        params["final_logits_bias"] = np.zeros((1, cfg.vocab_size), np.float32)
    check_params(cfg, params, source=directory)
    return cfg, params


def check_params(cfg: ModelConfig, params: dict, source: str = "params") -> None:
    """Every tensor the config implies is present with the right shape, and nothing else."""
    expected = dict(flatten(abstract_params(cfg)))
    got = dict(flatten(params))
    missing = sorted("/".join(p) for p in expected.keys() - got.keys())
    unexpected = sorted("/".join(p) for p in got.keys() - expected.keys())
    wrong = sorted(f"{'/'.join(p)}: {tuple(got[p].shape)} != {tuple(expected[p].shape)}"
                   for p in expected.keys() & got.keys() if tuple(got[p].shape) != tuple(expected[p].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{source} does not match its config ({cfg.model_type}, vocab {cfg.vocab_size}, "
                         f"d_model {cfg.d_model}): missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"wrong shapes {wrong[:5]}.")


def abstract_params(cfg: ModelConfig, quant=None) -> dict:
    """Param shapes (`jax.ShapeDtypeStruct`) of a model, with no memory allocated."""
    return abstract_variables(cfg, quant)["params"]


def abstract_variables(cfg: ModelConfig, quant=None) -> dict:
    """All Flax collections of a model as shapes: `params`, plus `elastic` for TBT students."""
    import jax
    import jax.numpy as jnp
    from dq_jax.modeling import Seq2SeqLM
    model = Seq2SeqLM(cfg, quant)
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, decoder_input_ids=ids))


def abstract_trainable(cfg: ModelConfig, quant=None) -> dict:
    """The trainable tree's shapes: params, plus the `elastic` step sizes of a TBT student."""
    from dq_jax.quant_config import ELASTIC
    v = abstract_variables(cfg, quant)
    return dict(v["params"], **({ELASTIC: v[ELASTIC]} if ELASTIC in v else {}))


def unflatten(items) -> dict:
    """Inverse of `flatten`: `{(a, b, c): v}` or pairs -> nested dict."""
    out: dict = {}
    for path, value in (items.items() if isinstance(items, dict) else items):
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def save_pretrained(cfg: ModelConfig, params: dict, out_dir: str, tokenizer_dir: str | None = None,
                    generation_config: dict[str, Any] | None = None) -> None:
    """Writes config.json + model.safetensors (+ tokenizer files, generation_config.json)."""
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.name == "bfloat16"
                                  else np.asarray(v)) for k, v in params_to_state_dict(params, cfg.tie_word_embeddings).items()}
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_hf_dict(), f, indent=2, sort_keys=True)
    if generation_config is not None:
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(generation_config, f, indent=2, sort_keys=True)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(tokenizer_dir, name)):
                shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))


def load_tokenizer(path: str, model_type: str = "bart"):
    """The teacher's tokenizer from a local directory (or hub id).

    Directories with a `tokenizer_config.json` load through AutoTokenizer; bare vocab/merges or
    sentencepiece files (as some mirrors ship them) load as the BART/mBART tokenizer class, so
    special tokens (`<s>`, `<pad>`, `</s>`) are known either way.
    """
    import transformers
    directory = resolve(path, weights=False) if not os.path.isdir(path) else path
    files = set(os.listdir(directory))
    if "tokenizer_config.json" in files:
        tok = transformers.AutoTokenizer.from_pretrained(directory)
    elif model_type == "mbart":
        tok = transformers.MBartTokenizer.from_pretrained(directory)
    elif {"vocab.json", "merges.txt"} <= files or "tokenizer.json" in files:
        tok = transformers.BartTokenizer.from_pretrained(directory)
    else:
        raise FileNotFoundError(f"No tokenizer in {directory}: expected tokenizer_config.json, tokenizer.json "
                                "or vocab.json + merges.txt.")
    if tok.pad_token_id is None or tok.eos_token_id is None:
        raise ValueError(f"The tokenizer in {directory} defines no pad or eos token; add a tokenizer_config.json.")
    return tok
