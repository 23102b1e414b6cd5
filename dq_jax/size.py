"""Model size by the paper's convention (METHOD.md, "Model size"), from shapes only.

Components: Linear weights of encoder/decoder layers (W bits), the token embedding counted
once (E bits), everything else in fp32: biases, LayerNorms, positional embeddings,
final_logits_bias. Scales are not counted by this convention.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dq_jax.hf import flatten
from dq_jax.policy import Role, classify, fp32_lm_head_copy, param_rule
from dq_jax.quant_config import split_elastic

MIB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    elements: int
    bits: int

    @property
    def mib(self) -> float:
        return self.elements * self.bits / 8 / MIB


def component_of(path: tuple[str, ...], ndim: int) -> str:
    """The size report's row of a parameter: its role's name. The paper counts every Linear
    weight at W bits, an untied LM head (an `nn.Linear` in HF) included."""
    role = classify(path, ndim).role
    return (Role.LINEAR if role is Role.LM_HEAD else role).value


def paper_components(abstract_params: dict, weight_bits: int | None, embed_bits: int | None) -> list[Component]:
    """Per-component element counts and bits; `None` bits mean fp32."""
    counts: dict[str, int] = {}
    for path, leaf in flatten(abstract_params):
        name = component_of(path, len(leaf.shape))
        counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
    bits = {Role.LINEAR.value: weight_bits or 32, Role.TOKEN_EMBEDDING.value: embed_bits or 32}
    order = tuple(r.value for r in (Role.LINEAR, Role.TOKEN_EMBEDDING, Role.POSITIONS, Role.NORM, Role.BIAS,
                                    Role.LOGITS_BIAS))
    return [Component(n, counts.get(n, 0), bits.get(n, 32)) for n in order]


def paper_size_mib(abstract_params: dict, weight_bits: int | None, embed_bits: int | None) -> float:
    return sum(c.mib for c in paper_components(abstract_params, weight_bits, embed_bits))


# ----------------------------------------------------------------------------- packed file

def tokenizer_bytes(directory: str | None) -> int:
    """Bytes the tokenizer files add to a packed file's metadata (JSON-escaped text)."""
    import json
    import os
    from dq_jax.export import _tokenizer_payload
    if not directory or not os.path.isdir(directory):
        return 0
    return len(json.dumps(json.dumps(_tokenizer_payload(directory))))


def packed_components(abstract_params: dict, quant) -> list[dict]:
    """Rows of the packed file by component: elements, stored bits per element, bytes.

    Mirrors `dq_jax.export.write_packed`: codes at their container width, fp32 scales, fp32
    for everything unquantized, and an fp32 LM head when the embedding is quantized but the
    head is not; the learned activation step sizes of a TBT student if `abstract_params` has
    them (see `hf.abstract_trainable`)."""
    from dq_jax.packing import packed_nbytes
    rows: dict[str, dict] = {}

    def add(name, elements, nbytes, bits):
        r = rows.setdefault(name, {"component": name, "elements": 0, "bytes": 0, "bits": bits})
        r["elements"] += elements
        r["bytes"] += nbytes

    abstract_params, elastic = split_elastic(abstract_params)
    for _ in flatten(elastic or {}):
        add(Role.STEP_SIZE.value, 1, 4, 32)
    for path, leaf in flatten(abstract_params):
        n, ndim = int(np.prod(leaf.shape)), len(leaf.shape)
        rule = param_rule(path, ndim, quant)
        if rule is None:
            add(component_of(path, ndim), n, 4 * n, 32)
            continue
        add(component_of(path, ndim), n, packed_nbytes(n, rule.storage_bits), rule.storage_bits)
        axes = rule.reduce_axes
        groups = 1 if axes is None else int(np.prod([d for i, d in enumerate(leaf.shape)
                                                      if i not in {a % ndim for a in axes}]))
        add("scales", groups, 4 * groups, 32)
    if fp32_lm_head_copy(quant):
        n = int(np.prod(abstract_params["shared"]["embedding"].shape))
        add("LM head (fp32 copy)", n, 4 * n, 32)
    for r in rows.values():
        r["mib"] = r["bytes"] / MIB
    return list(rows.values())


def packed_size_bytes(abstract_params: dict, quant, tokenizer_bytes: int = 0) -> int:
    """Predicted size of the packed file: tensors + safetensors header + metadata."""
    rows = packed_components(abstract_params, quant)
    n_tensors = sum(1 for _ in flatten(abstract_params)) + 2  # + scales entries, lm head (rough)
    header = 80 * n_tensors + 4096  # per-tensor header entries, configs and the quantized index
    return sum(r["bytes"] for r in rows) + header + tokenizer_bytes
