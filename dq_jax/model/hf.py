"""Hugging Face checkpoints and tokenizers <-> (ModelConfig, plain nested-dict Flax params).

Reading and writing needs numpy only, `pytorch_model.bin` included (`pytorch_bin`). How names
map is `dq_jax.model.hf_layout`; loaded params are checked against the model's shapes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import numpy as np

from dq_jax.model import pytorch_bin
from dq_jax.model.config import ModelConfig
from dq_jax.model.hf_layout import TOKENIZER_FILES, flatten, params_to_state_dict, state_dict_to_params
from dq_jax.model.modeling import abstract_params

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


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
            f"Hugging Face hub ({type(e).__name__}: {e}). Pass a local HF checkpoint directory."
        ) from e


def load_state_dict(directory: str) -> dict[str, np.ndarray]:
    st = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(st) or os.path.exists(index):
        from safetensors.numpy import load_file

        if os.path.exists(st):
            files = [st]
        else:
            with open(index) as fh:
                weight_map = json.load(fh)["weight_map"]
            files = sorted({os.path.join(directory, f) for f in weight_map.values()})
        sd = {}
        for f in files:
            sd.update(load_file(f))
        return sd
    binary = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(binary):  # read with numpy: no torch, and no code from the pickle runs
        return pytorch_bin.load_state_dict(binary)
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
    wrong = sorted(
        f"{'/'.join(p)}: {tuple(got[p].shape)} != {tuple(expected[p].shape)}"
        for p in expected.keys() & got.keys()
        if tuple(got[p].shape) != tuple(expected[p].shape)
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not match its config ({cfg.model_type}, vocab {cfg.vocab_size}, "
            f"d_model {cfg.d_model}): missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}."
        )


def save_pretrained(
    cfg: ModelConfig,
    params: dict,
    out_dir: str,
    tokenizer_dir: str | None = None,
    generation_config: dict[str, Any] | None = None,
) -> None:
    """Writes config.json + model.safetensors (+ tokenizer files, generation_config.json)."""
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    sd = {
        k: np.ascontiguousarray(
            np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.name == "bfloat16" else np.asarray(v)
        )
        for k, v in params_to_state_dict(params, cfg.tie_word_embeddings).items()
    }
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
        raise FileNotFoundError(
            f"No tokenizer in {directory}: expected tokenizer_config.json, tokenizer.json or vocab.json + merges.txt."
        )
    if tok.pad_token_id is None or tok.eos_token_id is None:
        raise ValueError(f"The tokenizer in {directory} defines no pad or eos token; add a tokenizer_config.json.")
    return tok
