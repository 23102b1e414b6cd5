"""The quantization policy: what every parameter is, and how each tensor of a student is quantized.

This is the one place that classifies parameters by their path and decides, for a
`QuantConfig`, which quantizer each weight and activation gets. The model
(`layers.QDense`/`QEmbed`/`ActQuant`), the exports, the size report, the sharding rules, the
optimizer masks and the PyTorch oracle of the tests all read it, so a change here changes
them together.

- `classify(path, ndim) -> ParamInfo`: the role of a parameter (a Linear kernel of a layer,
  the token embedding, a bias, ...), its logical axes for sharding, and whether it is trained
  and weight-decayed.
- `weight_rule(role, quant) -> WeightRule | None`: the quantizer of a weight role (kind, bits,
  the axes its scales reduce over, clip), its `codes` (a typed `Codes`) and `fake` forms, and
  the bits its codes are stored at; `None` keeps the tensor in full precision.
- `act_rule(role, quant) -> ActRule | None`: the same for an activation role (Linear inputs,
  attention operands), dynamic symmetric or TBT's elastic quantizer with a learned step size.
"""

from __future__ import annotations

import dataclasses
import enum

from dq_jax.quant.config import ELASTIC, QuantConfig

# Codes are stored in the smallest container `packing` supports: 3-bit codes take 4 bits.
CONTAINER_BITS = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}


class Role(enum.Enum):
    """What a parameter is. The value is the component name size reports group it under."""

    LINEAR = "Linear weights"  # kernels of the attention and FFN projections of every layer
    LM_HEAD = "LM head"  # the separate output projection of an untied model
    TOKEN_EMBEDDING = "token embedding"  # the shared input table (and the tied LM head)
    POSITIONS = "positional embeddings"
    NORM = "LayerNorms"
    BIAS = "biases"
    LOGITS_BIAS = "final_logits_bias"  # a buffer in HF: never trained
    STEP_SIZE = "activation step sizes"  # TBT's learned elastic step sizes


class ActRole(enum.Enum):
    """Where an activation is quantized."""

    LINEAR_INPUT = "linear_input"  # the input of q/k/v/out_proj and fc1
    FFN_HIDDEN = "ffn_hidden"  # fc2's input, after GELU/ReLU: (almost) non-negative
    QUERY = "query"  # scaled queries before q.k
    KEY = "key"
    VALUE = "value"  # before p.v
    PROBS = "probs"  # attention probabilities (non-negative) before p.v


# Activations that are (almost) never negative get TBT's unsigned elastic quantizer.
_UNSIGNED = (ActRole.FFN_HIDDEN, ActRole.PROBS)
_ATTENTION = ("q_proj", "k_proj", "v_proj")


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    role: Role
    logical_axes: tuple[str | None, ...]  # one name per dimension, mapped to mesh axes by sharding.RULES

    @property
    def trainable(self) -> bool:
        return self.role is not Role.LOGITS_BIAS

    @property
    def decays(self) -> bool:
        """AdamW's weight decay applies to kernels and embedding tables only."""
        return self.role in (Role.LINEAR, Role.LM_HEAD, Role.TOKEN_EMBEDDING, Role.POSITIONS)


def key_names(keypath) -> tuple[str, ...]:
    """A pytree key path as the parameter path `classify` reads: `("encoder", "layers_0", ...)`."""
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in keypath)


def classify(path: tuple[str, ...], ndim: int) -> ParamInfo:
    """The role and logical axes of a parameter from its Flax path (HF naming, `dq_jax.model.hf`)."""
    leaf, owner = path[-1], (path[-2] if len(path) > 1 else "")
    if path[0] == ELASTIC:
        return ParamInfo(Role.STEP_SIZE, (None,) * ndim)
    if path[0] == "final_logits_bias":
        return ParamInfo(Role.LOGITS_BIAS, (None, "vocab"))
    if owner == "shared":
        return ParamInfo(Role.TOKEN_EMBEDDING, ("vocab", "embed"))
    if owner == "lm_head":
        return ParamInfo(Role.LM_HEAD, ("embed", "vocab"))
    if owner == "embed_positions":
        return ParamInfo(Role.POSITIONS, ("positions", "embed"))
    if leaf == "scale" or any("norm" in p for p in path[:-1]):
        return ParamInfo(Role.NORM, ("norm",))
    kernel = leaf == "kernel"
    role = Role.LINEAR if kernel else Role.BIAS
    if owner in _ATTENTION:
        return ParamInfo(role, ("embed", "heads") if kernel else ("heads",))
    if owner == "out_proj":
        return ParamInfo(role, ("heads", "embed") if kernel else ("norm",))
    if owner == "fc1":
        return ParamInfo(role, ("embed", "mlp") if kernel else ("mlp",))
    if owner == "fc2":
        return ParamInfo(role, ("mlp", "embed") if kernel else ("norm",))
    return ParamInfo(role, (None,) * ndim)


def component_of(path: tuple[str, ...], ndim: int) -> str:
    """The size report's row of a parameter: its role's name. The paper counts every Linear
    weight at W bits, an untied LM head (an `nn.Linear` in HF) included."""
    role = classify(path, ndim).role
    return (Role.LINEAR if role is Role.LM_HEAD else role).value


# ----------------------------------------------------------------------------- weights


def weight_kind(method: str, bits: int) -> str:
    """The quantizer family a method uses at a bit-width."""
    if method == "dq_bart":
        return {1: "binary", 2: "ternary"}.get(bits, "symmetric")
    if method == "tbt":
        return {1: "tbt_binary", 2: "tbt_ternary"}[bits]
    return method


@dataclasses.dataclass(frozen=True)
class WeightRule:
    """How one weight tensor is quantized. `reduce_axes` are in Flax's layout (a kernel is
    `[in, out]`: per output row is `(0,)`; embedding rows are `(-1,)`); None: one scale."""

    kind: str  # symmetric, ternary, binary, mse, tbt_ternary or tbt_binary
    bits: int
    reduce_axes: tuple[int, ...] | None
    clip: float
    mse_steps: int

    @property
    def storage_bits(self) -> int:
        """Bits per code in the packed file: ternary codes take 2, binary 1, others a container."""
        return {"ternary": 2, "binary": 1, "tbt_ternary": 2, "tbt_binary": 1}.get(self.kind, CONTAINER_BITS[self.bits])

    def codes(self, w, alpha=None):
        """`w` -> `Codes`, exactly as training quantizes it. (`alpha` is an elastic activation's
        step size: a weight's quantizer takes the signature of an activation's and ignores it.)"""
        return _quantizers().WEIGHTS[self.kind][1](w, self.bits, self.clip, self.reduce_axes, self.mse_steps)

    def fake(self, w, alpha=None):
        """`w` -> its fake-quantized value (w's dtype) with the straight-through gradient."""
        return _quantizers().WEIGHTS[self.kind][0](w, self.bits, self.clip, self.reduce_axes, self.mse_steps)


def _quantizers():
    """The JAX quantizers, imported on first use: numpy-only readers of packed files import this
    module for the rules and storage bits alone."""
    from dq_jax.quant import registry

    return registry


def weight_rule(role: Role, quant: QuantConfig | None) -> WeightRule | None:
    """The quantizer of a weight role under `quant`, or None for full precision.

    Linear kernels take `weight_bits`, one scale per tensor or per output row
    (`weight_granularity`; TBT is always per row); the token embedding takes `embed_bits`,
    one scale per row. Everything else (positions, norms, biases, a separate LM head) stays
    full precision; see `tied_lm_head_rule` for the tied LM head."""
    if quant is None:
        return None
    if role is Role.LINEAR and quant.weight_bits:
        axes = None if quant.weight_granularity == "tensor" and quant.method != "tbt" else (0,)
        return WeightRule(
            weight_kind(quant.method, quant.weight_bits), quant.weight_bits, axes, quant.weight_clip, quant.mse_steps
        )
    if role is Role.TOKEN_EMBEDDING and quant.embed_bits:
        return WeightRule(
            weight_kind(quant.method, quant.embed_bits), quant.embed_bits, (-1,), quant.weight_clip, quant.mse_steps
        )
    return None


def tied_lm_head_rule(quant: QuantConfig | None) -> WeightRule | None:
    """The quantizer of the output projection of a tied model (the embedding table used as
    the LM head): the embedding's with `quantize_lm_head`, else full precision (the reference)."""
    return weight_rule(Role.TOKEN_EMBEDDING, quant) if quant and quant.quantize_lm_head else None


def param_rule(path: tuple[str, ...], ndim: int, quant: QuantConfig | None) -> WeightRule | None:
    """`weight_rule` of the parameter at `path`."""
    return weight_rule(classify(path, ndim).role, quant)


def quantize_tree(params: dict, quant: QuantConfig | None) -> dict:
    """Params with every quantized weight replaced by its `Codes` (int8 values, fp32 scales),
    everything else as it is: a student quantized once, for evaluation and generation, whose
    weights stay resident as codes. The model accepts such a tree in both compute modes."""
    import jax

    def one(keypath, value):
        rule = param_rule(key_names(keypath), len(value.shape), quant)
        return rule.codes(value) if rule else value

    return jax.tree_util.tree_map_with_path(one, params)


def fp32_lm_head_copy(quant: QuantConfig | None) -> bool:
    """True when lookups use the quantized embedding but the output projection the fp32 one
    (the reference): exports then keep a separate fp32 `lm_head.weight`."""
    return bool(quant and quant.embed_bits and not quant.quantize_lm_head)


# ----------------------------------------------------------------------------- activations


@dataclasses.dataclass(frozen=True)
class ActRule:
    """How one activation is quantized: dynamic symmetric (3..8 bits, one scale per tensor or
    per example) or, for TBT at 1-2 bits, elastic with a learned step size."""

    bits: int
    clip: float
    per_example: bool
    elastic: bool
    signed: bool

    def reduce_axes(self, ndim: int) -> tuple[int, ...] | None:
        """One scale (or elastic minimum) per example: all but the leading axis; else the tensor."""
        return tuple(range(1, ndim)) if self.per_example else None

    def fake(self, x, alpha=None):
        """`x [B, ...]` -> its fake-quantized value; `alpha` is the elastic step size."""
        from dq_jax.quant import dq_bart  # JAX: see `_quantizers`
        from dq_jax.quant import elastic_activations as elastic

        if not self.elastic:
            return dq_bart.activation(x, self.bits, self.clip, per_example=self.per_example)
        return elastic.elastic(x, alpha, self.bits, self.signed, self.reduce_axes(x.ndim))

    def codes(self, x, alpha=None):
        """`x [B, ...]` -> `Codes` whose `dequantize` is `fake(x, alpha)` bit for bit."""
        from dq_jax.quant import dq_bart  # JAX: see `_quantizers`
        from dq_jax.quant import elastic_activations as elastic

        if not self.elastic:
            return dq_bart.symmetric_codes(x, self.bits, self.clip, self.reduce_axes(x.ndim))
        return elastic.elastic_codes(x, alpha, self.bits, self.signed, self.reduce_axes(x.ndim))

    def init_step_size(self, x):
        """TBT's data-dependent initial step size from the first activations `x`."""
        from dq_jax.quant import elastic_activations as elastic  # JAX: see `_quantizers`

        return elastic.elastic_init(x, self.bits, self.signed)


def act_rule(role: ActRole, quant: QuantConfig | None) -> ActRule | None:
    """The quantizer of an activation role under `quant`, or None for full precision."""
    if not isinstance(role, ActRole):  # e.g. a bool where a role belongs would quietly mean "signed"
        raise TypeError(f"activation role must be an ActRole, got {role!r}")
    if quant is None or quant.act_bits is None:
        return None
    return ActRule(quant.act_bits, quant.act_clip, quant.act_scale == "example", quant.elastic, role not in _UNSIGNED)
