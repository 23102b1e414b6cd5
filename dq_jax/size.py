"""Model size by the paper's convention (METHOD.md, "Model size"), from shapes only. What the
packed file really stores is `dq_jax.export.packed.components` and `file_bytes`.

Components: Linear weights of encoder/decoder layers (W bits), the token embedding counted
once (E bits), everything else in fp32: biases, LayerNorms, positional embeddings,
final_logits_bias. Scales are not counted by this convention.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dq_jax.model.hf_layout import flatten
from dq_jax.quant.policy import Role, component_of

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    elements: int
    bits: int

    @property
    def mib(self) -> float:
        return self.elements * self.bits / 8 / MIB


def paper_components(abstract_params: dict, weight_bits: int | None, embed_bits: int | None) -> list[Component]:
    """Per-component element counts and bits; `None` bits mean fp32."""
    counts: dict[str, int] = {}
    for path, leaf in flatten(abstract_params):
        name = component_of(path, len(leaf.shape))
        counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
    bits = {Role.LINEAR.value: weight_bits or 32, Role.TOKEN_EMBEDDING.value: embed_bits or 32}
    order = tuple(
        r.value for r in (Role.LINEAR, Role.TOKEN_EMBEDDING, Role.POSITIONS, Role.NORM, Role.BIAS, Role.LOGITS_BIAS)
    )
    return [Component(n, counts.get(n, 0), bits.get(n, 32)) for n in order]


def paper_size_mib(abstract_params: dict, weight_bits: int | None, embed_bits: int | None) -> float:
    return sum(c.mib for c in paper_components(abstract_params, weight_bits, embed_bits))
