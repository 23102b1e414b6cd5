"""An independent PyTorch DQ-BART student: stock HF BART/mBART patched with fake quantizers.

The oracle of our quantized student's numbers and gradients in the tests, and the PyTorch
training step `bench.train_step` compares speed against. Which tensors are quantized, and with
which quantizer, comes from `dq_jax.quant.policy` (the one quantization policy); how each quantizer
computes is written here independently.

It follows the reference code (HF BART with `QuantizeLinear` layers and quantized attention):
every forward pass fake-quantizes the fp32 master weights, backward uses the clipped
straight-through estimator (STE). The quantizers (`tests.torch_quantizers`) are written from
the METHOD.md formulas, not by calling JAX, but their float32 arithmetic is ordered like
`dq_jax.quant`'s, including two rewrites XLA applies to it (a division by a constant or by a
broadcast scale becomes a multiplication by the reciprocal). Symmetric quantizers are
therefore bit-identical to ours; TWN/BWN/MSE scales are float32 sums, which torch and XLA
reduce in different orders, so they can differ by a few ulp (bit-identical again when the sums
are exact). Differences between the two students come only from such reduction orders,
matmuls included.

`quantize_model(model, W, E, A)` patches a `BartForConditionalGeneration` or
`MBartForConditionalGeneration` in place:
- every `nn.Linear` of the encoder/decoder layers computes `q_a(x) @ q_w(W)^T + b`;
- attention quantizes the scaled queries and the keys before `Q K^T`, and the probabilities
  (after dropout) and the values before `P V`; queries are scaled before the matmul as in the
  reference (HF 5.x scales the scores afterwards); the probabilities it returns (for
  `output_attentions`, i.e. distillation) are taken before dropout and quantization, like
  `dq_jax.model.layers.Attention`'s (HF's eager attention returns them after dropout);
- the token embedding lookups return per-row quantized rows (then HF's `embed_scale`);
- the LM head stays tied to the full-precision embedding; positional embeddings, LayerNorms,
  biases and `final_logits_bias` stay full precision.
Parameters, their names and the state dict are untouched (modules change class in place), so
optimizers, `save_pretrained` and weight tying work as before. A patched model holds lambdas
and generated classes: deep-copy it, but save its state dict rather than pickling it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import AttentionInterface

from dq_jax.quant import policy
from dq_jax.quant.config import QuantConfig
from dq_jax.quant.policy import ActRole, Role
from tests.torch_quantizers import DEFAULT_CLIP, _identity, activation, weight_quantizer

_ATTN_IMPL = "dq_bart_reference"  # the name our attention function is registered under


# --------------------------------------------------------------------------- model patching


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What one patched module quantizes; kept on the module as `dq_spec`."""

    weight: Callable = _identity  # weight (Linear) or looked-up rows (embedding)
    act: Callable = _identity  # the Linear's input


@dataclasses.dataclass(frozen=True)
class _AttentionSpec:
    """The quantizers of one attention module's matmul operands; kept as `dq_spec`."""

    query: Callable = _identity
    key: Callable = _identity
    probs: Callable = _identity
    value: Callable = _identity


def _act_quantizer(rule: policy.ActRule | None):
    if rule is None:
        return _identity
    if rule.elastic:
        raise ValueError("the PyTorch oracle has no elastic (TBT) activation quantizer")
    return lambda x: activation(x, rule.bits, rule.clip, rule.per_example)


class QuantLinear(nn.Linear):
    """`nn.Linear` computing `q_a(x) @ q_w(W)^T + b`; made by swapping an instance's class,
    so parameters, names and state dict keys are the original ones."""

    dq_spec: _Spec

    def forward(self, x):
        return F.linear(self.dq_spec.act(x), self.dq_spec.weight(self.weight), self.bias)


class _QuantEmbeddingMixin:
    """Token lookups return per-row quantized rows, then HF's `embed_scale` (if any)."""

    def forward(self, input_ids):
        # Scales are per row, so quantizing the gathered rows equals gathering quantized rows
        # (and costs [B, T, D] instead of [V, D]). padding_idx: no gradient to the pad row.
        rows = F.embedding(
            input_ids,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        return self.dq_spec.weight(rows) * getattr(self, "embed_scale", 1.0)


_EMBED_CLASSES: dict = {}


def _quant_embedding_class(cls):
    if issubclass(cls, _QuantEmbeddingMixin):
        return cls
    if cls not in _EMBED_CLASSES:
        _EMBED_CLASSES[cls] = type(f"Quant{cls.__name__}", (_QuantEmbeddingMixin, cls), {})
    return _EMBED_CLASSES[cls]


def quantized_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with DQ-BART activation quantization (HF attention-interface signature).

    query/key/value `[B, H, T|S, Dh]`; returns (out `[B, T, H, Dh]`, probs `[B, H, T, S]`).
    The probabilities returned (for `output_attentions` and distillation) are the ones before
    dropout and quantization, like `dq_jax.model.layers.Attention`'s."""
    spec = getattr(module, "dq_spec", _AttentionSpec())
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    # The reference scales the queries before quantizing them (HF scales the scores after).
    scores = torch.matmul(spec.query(query * scaling), spec.key(key).transpose(2, 3))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1)
    p = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(spec.probs(p), spec.value(value))
    return out.transpose(1, 2).contiguous(), probs


AttentionInterface.register(_ATTN_IMPL, quantized_attention)


def _is_attention(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "out_proj", "scaling", "config"))


def quantize_model(
    model: nn.Module,
    weight_bits: int | None,
    embed_bits: int | None,
    act_bits: int | None,
    method: str = "dq_bart",
    act_per_example: bool = False,
    weight_per_row: bool = False,
    clip: float = DEFAULT_CLIP,
    act_clip: float = DEFAULT_CLIP,
    mse_steps: int = 5,
    inplace: bool = True,
) -> nn.Module:
    """Turns a HF `(M)BartForConditionalGeneration` (or `(M)BartModel`) into a DQ-BART student.

    `weight_bits` quantizes every Linear weight of the encoder/decoder layers (per tensor, or
    per output row with `weight_per_row`), `embed_bits` the token-embedding lookups (per row),
    `act_bits` the Linear inputs and attention's q/k/probs/v (one dynamic scale per tensor, or
    per example with `act_per_example`); `None` leaves that part in full precision. Weights
    are re-quantized from the fp32 parameters at every forward, gradients use the STE.
    Returns the patched model (a deep copy if `inplace=False`). Calling it again re-patches.
    """
    if not inplace:
        model = copy.deepcopy(model)
    base = getattr(model, "model", model)
    if not (hasattr(base, "encoder") and hasattr(base, "decoder") and hasattr(base, "shared")):
        raise TypeError(f"{type(model).__name__} is not a BART/mBART encoder-decoder model")
    quant = QuantConfig(
        weight_bits,
        embed_bits,
        act_bits,
        method,
        "row" if weight_per_row else "tensor",
        weight_clip=clip,
        act_clip=act_clip,
        act_scale="example" if act_per_example else "tensor",
        mse_steps=mse_steps,
    )
    wq = weight_quantizer(policy.weight_rule(Role.LINEAR, quant))
    eq = weight_quantizer(policy.weight_rule(Role.TOKEN_EMBEDDING, quant))
    act = {role: _act_quantizer(policy.act_rule(role, quant)) for role in ActRole}

    # The model-level implementation must be eager so masks arrive as 4-D additive tensors
    # and output_attentions works; each attention module then dispatches to ours below.
    if model.config._attn_implementation != "eager":
        model.set_attn_implementation("eager")

    for stack in (base.encoder, base.decoder):
        for name, module in stack.layers.named_modules():
            if isinstance(module, nn.Linear):
                module.__class__ = QuantLinear
                role = ActRole.FFN_HIDDEN if name.endswith("fc2") else ActRole.LINEAR_INPUT
                module.dq_spec = _Spec(weight=wq, act=act[role])
            elif _is_attention(module):
                module.dq_spec = _AttentionSpec(
                    *(act[r] for r in (ActRole.QUERY, ActRole.KEY, ActRole.PROBS, ActRole.VALUE))
                )
                if module.config._attn_implementation != _ATTN_IMPL:
                    # A private config copy: only this module's dispatch changes, the shared
                    # config (masks, output_attentions checks, save_pretrained) stays eager.
                    module.config = copy.copy(module.config)
                    module.config._attn_implementation = _ATTN_IMPL
    for emb in {id(m): m for m in (base.shared, base.encoder.embed_tokens, base.decoder.embed_tokens)}.values():
        emb.__class__ = _quant_embedding_class(type(emb))
        emb.dq_spec = _Spec(weight=eq)
    return model
