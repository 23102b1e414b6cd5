"""Model size by the paper's convention (METHOD.md, "Model size"), from shapes only.

Components: Linear weights of encoder/decoder layers (W bits), the token embedding counted
once (E bits), everything else in fp32: biases, LayerNorms, positional embeddings,
final_logits_bias. Scales are not counted by this convention.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dq_jax.hf import flatten

MIB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    elements: int
    bits: int

    @property
    def mib(self) -> float:
        return self.elements * self.bits / 8 / MIB


def component_of(path: tuple[str, ...]) -> str:
    leaf = path[-1]
    if path[0] == "shared":
        return "token embedding"
    if path[0] == "final_logits_bias":
        return "final_logits_bias"
    if "embed_positions" in path:
        return "positional embeddings"
    if leaf == "kernel":
        return "Linear weights"
    if leaf == "scale" or any("norm" in p for p in path[:-1]):
        return "LayerNorms"
    return "biases"


def paper_components(abstract_params: dict, weight_bits: int | None, embed_bits: int | None) -> list[Component]:
    """Per-component element counts and bits; `None` bits mean fp32."""
    counts: dict[str, int] = {}
    for path, leaf in flatten(abstract_params):
        name = component_of(path)
        counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
    bits = {"Linear weights": weight_bits or 32, "token embedding": embed_bits or 32}
    order = ("Linear weights", "token embedding", "positional embeddings", "LayerNorms", "biases",
             "final_logits_bias")
    return [Component(n, counts.get(n, 0), bits.get(n, 32)) for n in order]


def paper_size_mib(abstract_params: dict, weight_bits: int | None, embed_bits: int | None) -> float:
    return sum(c.mib for c in paper_components(abstract_params, weight_bits, embed_bits))
