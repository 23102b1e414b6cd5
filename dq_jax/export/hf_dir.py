"""The HF export of a trained student: a directory `from_pretrained` loads, holding its
fake-quantized weights (`codes * scales`, fp32), plus `dq_jax.json`.

PyTorch's BART has no activation quantizers, so this export cannot apply them: `dq_jax.json`
records the quant config and any learned activation step sizes (TBT), and the HF model computes
with full-precision activations. When the token embedding is quantized but the LM head is not
(the reference: lookups use the quantized table, the output projection the fp32 one), the
export keeps a separate fp32 `lm_head.weight` and says so with `tie_word_embeddings=false`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from dq_jax.model.config import ModelConfig
from dq_jax.model.hf import save_pretrained
from dq_jax.model.hf_layout import flatten, join_step_sizes, split_step_sizes, unflatten, untie_lm_head
from dq_jax.quant.config import QuantConfig
from dq_jax.quant.policy import param_rule

META_FILE = "dq_jax.json"  # beside HF weights: the quant config and what HF's config.json cannot hold


def fake_quantized_params(params: dict, quant: QuantConfig) -> dict:
    """Params with every quantized tensor replaced by `codes * scales` (numpy, fp32); elastic
    step sizes, if any, are kept as they are."""
    params, elastic = split_step_sizes(params)
    out = {}
    for path, value in flatten(params):
        rule = param_rule(path, np.ndim(value), quant)
        if rule:
            codes = rule.codes(np.asarray(value, np.float32))
            value = np.asarray(codes.values).astype(np.float32) * np.asarray(codes.scales, np.float32)
        out[path] = np.asarray(value, np.float32)
    return join_step_sizes(unflatten(out), elastic)


def export_hf(
    cfg: ModelConfig,
    params: dict,
    quant: QuantConfig,
    out_dir: str,
    tokenizer_dir: str | None = None,
    generation_config: dict | None = None,
) -> str:
    """HF directory with the student's fake-quantized weights (loads with from_pretrained), and
    `dq_jax.json` with the quant config and any learned activation step sizes."""
    params, elastic = split_step_sizes(params)
    cfg, with_head = untie_lm_head(cfg, params, quant)
    fq = fake_quantized_params(with_head, quant)  # a separate lm_head stays fp32
    save_pretrained(cfg, fq, out_dir, tokenizer_dir, generation_config)
    note = (
        "PyTorch BART has no activation quantizers: this model computes with full-precision activations. "
        f"The student was trained with {quant.act_bits}-bit activations"
        + (" and the learned step sizes below." if elastic else ".")
    )
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump({"quant_config": dataclasses.asdict(quant), "activations": note, "elastic": elastic}, f, indent=2)
    return out_dir
