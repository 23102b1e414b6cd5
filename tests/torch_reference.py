"""An independent PyTorch DQ-BART student: stock HF BART/mBART patched with fake quantizers.

The oracle of our quantized student's numbers and gradients in the tests, and the PyTorch
training step `bench.train_step` compares speed against. Which tensors are quantized, and with
which quantizer, comes from `dq_jax.quant.policy` (the one quantization policy); how each quantizer
computes is written here independently.

It follows the reference code (HF BART with `QuantizeLinear` layers and quantized attention):
every forward pass fake-quantizes the fp32 master weights, backward uses the clipped
straight-through estimator (STE). The quantizers are written from the METHOD.md formulas, not
by calling JAX, but their float32 arithmetic is ordered like `dq_jax.quant`'s, including two
rewrites XLA applies to it (a division by a constant or by a broadcast scale becomes a
multiplication by the reciprocal). Symmetric quantizers are therefore bit-identical to ours;
TWN/BWN/MSE scales are float32 sums, which torch and XLA reduce in different orders, so they
can differ by a few ulp (bit-identical again when the sums are exact). Differences between
the two students come only from such reduction orders, matmuls included.

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
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import AttentionInterface

from dq_jax.quant import policy
from dq_jax.quant.policy import ActRole, Role
from dq_jax.quant.config import QuantConfig

DEFAULT_CLIP = 2.5
# Below this a scale marks an all-zero group (as in dq_jax.quant): code 0, finite scale.
_MIN_SCALE = 2.0 ** -120
_ATTN_IMPL = "dq_bart_reference"  # the name our attention function is registered under

Dims = Optional[Sequence[int]]


# --------------------------------------------------------------------------- quantizers


class _STE(torch.autograd.Function):
    """Forward: `quantize(x)`; backward: the gradient passes where `-clip < x < clip`, else 0."""

    @staticmethod
    def forward(ctx, x, quantize, clip):
        xf = x.float()
        ctx.save_for_backward((xf > -clip) & (xf < clip))
        return quantize(x)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, torch.zeros_like(grad)), None, None


def _dims(x: torch.Tensor, per_row: bool, dims: Dims) -> tuple:
    """Reduction dims of one scale group: all (per tensor), the last (per row) or `dims`."""
    if dims is not None:
        return tuple(sorted({d % x.ndim for d in dims}))
    return (x.ndim - 1,) if per_row else tuple(range(x.ndim))


def _group_size(x: torch.Tensor, dims: tuple) -> int:
    size = 1
    for d in dims:
        size *= x.shape[d]
    return max(size, 1)


def _div_by_constant(t: torch.Tensor, c: int) -> torch.Tensor:
    """`t / c` the way XLA computes a division by a compile-time constant: `t * fl32(1 / c)`
    (its algebraic simplifier rewrites it so), one ulp off a true division now and then."""
    return t * torch.tensor(1.0, dtype=torch.float32).div(float(c))


def _levels(bits: int) -> int:
    if bits not in range(2, 9):
        raise ValueError(f"bits={bits!r} is not supported; supported range is 2..8")
    return 2 ** (int(bits) - 1) - 1


def _dequantize(codes, scales, dtype):
    # Through int8 like dq_jax.quant's integer codes: this also turns round()'s -0.0 into +0.0.
    return (codes.to(torch.int8).float() * scales).to(dtype)


def _symmetric_q(x, n, clip, dims):
    xc = x.float().clamp(-clip, clip)
    m = xc.abs().amax(dim=dims, keepdim=True)
    # The step is `m / n` pushed to a fixed point of `s -> n * s / n` (dq_jax.quant.dq_bart._stable_step);
    # torch runs each op eagerly in float32, so this is the same arithmetic.
    step = (n * (m / n)) / n
    ok = step >= _MIN_SCALE
    # Not `n / m`: torch evaluates `scalar / tensor` as `tensor.reciprocal() * scalar`, two
    # roundings that move ~1 in 4 values by an ulp and flip codes sitting on a .5 boundary.
    inv = torch.where(ok, torch.div(torch.full_like(m, n), torch.where(ok, m, torch.ones_like(m))),
                      torch.zeros_like(m))
    codes = torch.round(xc * inv)  # half-to-even
    return _dequantize(codes, torch.where(ok, step, torch.ones_like(step)), x.dtype)


def _ternary_q(x, clip, dims):
    xc = x.float().clamp(-clip, clip)
    ax = xc.abs()
    keep = ax > 0.7 * _div_by_constant(ax.sum(dim=dims, keepdim=True), _group_size(xc, dims))
    count = keep.float().sum(dim=dims, keepdim=True)
    alpha = torch.where(keep, ax, torch.zeros_like(ax)).sum(dim=dims, keepdim=True) / count.clamp(min=1.0)
    ok = alpha >= _MIN_SCALE
    codes = torch.where(keep & ok, torch.sign(xc), torch.zeros_like(xc))
    return _dequantize(codes, torch.where(ok, alpha, torch.ones_like(alpha)), x.dtype)


def _binary_q(x, clip, dims):
    xc = x.float().clamp(-clip, clip)
    alpha = _div_by_constant(xc.abs().sum(dim=dims, keepdim=True), _group_size(xc, dims))
    codes = torch.where(xc >= 0, 1.0, -1.0)  # sign(0) := +1, so every code fits in one bit
    return _dequantize(codes, torch.where(alpha >= _MIN_SCALE, alpha, torch.zeros_like(alpha)), x.dtype)


def _mse_q(x, n, clip, dims, steps):
    xc = x.float().clamp(-clip, clip)
    alpha = xc.abs().amax(dim=dims, keepdim=True) / n  # n is opaque to XLA: a true division
    alpha = torch.where(alpha >= _MIN_SCALE, alpha, torch.ones_like(alpha))

    def round_codes(a):
        # XLA computes `xc / a` with a broadcast `a` as `xc * (1 / a)`; so do we.
        return torch.round(xc * torch.div(torch.ones_like(a), a)).clamp(-n, n)

    for _ in range(steps):  # alternating least squares: codes for alpha, then alpha for codes
        b = round_codes(alpha)
        new = (xc * b).sum(dim=dims, keepdim=True) / (b * b).sum(dim=dims, keepdim=True).clamp(min=1.0)
        alpha = torch.where(new >= _MIN_SCALE, new, alpha)
    return _dequantize(round_codes(alpha), alpha, x.dtype)


def symmetric(x: torch.Tensor, bits: int, clip: float = DEFAULT_CLIP, per_row: bool = False,
              dims: Dims = None) -> torch.Tensor:
    """Symmetric uniform fake quantization (2..8 bits) with an STE; `x [*]` -> `q [*]`.

    `q = round_half_even(xc * n / m) * m / n`, `xc = clamp(x, +-clip)`, `n = 2**(bits-1) - 1`,
    `m = max|xc|` per tensor, per row (last dim) with `per_row`, or over `dims` if given."""
    n = _levels(bits)
    d = _dims(x, per_row, dims)
    return _STE.apply(x, lambda t: _symmetric_q(t, n, float(clip), d), float(clip))


def ternary(x: torch.Tensor, clip: float = DEFAULT_CLIP, per_row: bool = False,
            dims: Dims = None) -> torch.Tensor:
    """Ternary (TWN) fake quantization with an STE: `alpha * sign(x) * (|x| > 0.7 mean|x|)`,
    alpha the mean |x| of the kept elements."""
    d = _dims(x, per_row, dims)
    return _STE.apply(x, lambda t: _ternary_q(t, float(clip), d), float(clip))


def binary(x: torch.Tensor, clip: float = DEFAULT_CLIP, per_row: bool = False,
           dims: Dims = None) -> torch.Tensor:
    """Binary (BWN) fake quantization with an STE: `mean|x| * sign(x)`, sign(0) = +1."""
    d = _dims(x, per_row, dims)
    return _STE.apply(x, lambda t: _binary_q(t, float(clip), d), float(clip))


def mse(x: torch.Tensor, bits: int, clip: float = DEFAULT_CLIP, per_row: bool = False,
        dims: Dims = None, steps: int = 5) -> torch.Tensor:
    """Symmetric levels with a scale refined by `steps` alternating least-squares updates."""
    n = _levels(bits)
    d = _dims(x, per_row, dims)
    return _STE.apply(x, lambda t: _mse_q(t, n, float(clip), d, int(steps)), float(clip))


def activation(x: torch.Tensor, bits: int, clip: float = DEFAULT_CLIP,
               per_example: bool = False) -> torch.Tensor:
    """Dynamic symmetric activation quantization: one scale for the whole tensor (the
    reference) or, with `per_example`, one per index of dim 0."""
    dims = tuple(range(1, x.ndim)) if per_example else None
    return symmetric(x, bits, clip, dims=dims)


# The PyTorch quantizer of each `dq_jax.quant.policy` weight kind: (x, rule, per_row) -> q.
_WEIGHT_KINDS = {
    "symmetric": lambda w, r, per_row: symmetric(w, r.bits, r.clip, per_row),
    "ternary": lambda w, r, per_row: ternary(w, r.clip, per_row),
    "binary": lambda w, r, per_row: binary(w, r.clip, per_row),
    "mse": lambda w, r, per_row: mse(w, r.bits, r.clip, per_row, steps=r.mse_steps),
}


def weight_quantizer(rule: Optional[policy.WeightRule]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fake quantizer the policy's `rule` describes, in PyTorch (identity for None).

    The policy's axes are Flax's: a kernel `[in, out]` per output row reduces axis 0, an
    embedding per row axis -1; a PyTorch `[out, in]` weight and a looked-up row both reduce
    their last dimension, so any per-row rule is `per_row` here."""
    if rule is None:
        return _identity
    if rule.kind not in _WEIGHT_KINDS:
        raise ValueError(f"the PyTorch oracle implements {sorted(_WEIGHT_KINDS)}, not {rule.kind!r}")
    per_row = rule.reduce_axes is not None
    return lambda w: _WEIGHT_KINDS[rule.kind](w, rule, per_row)


def _identity(x):
    return x


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


def _act_quantizer(rule: Optional[policy.ActRule]):
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
        rows = F.embedding(input_ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
        return self.dq_spec.weight(rows) * getattr(self, "embed_scale", 1.0)


_EMBED_CLASSES: dict = {}


def _quant_embedding_class(cls):
    if issubclass(cls, _QuantEmbeddingMixin):
        return cls
    if cls not in _EMBED_CLASSES:
        _EMBED_CLASSES[cls] = type(f"Quant{cls.__name__}", (_QuantEmbeddingMixin, cls), {})
    return _EMBED_CLASSES[cls]


def quantized_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                        **kwargs):
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


def quantize_model(model: nn.Module, weight_bits: Optional[int], embed_bits: Optional[int],
                   act_bits: Optional[int], method: str = "dq_bart", act_per_example: bool = False,
                   weight_per_row: bool = False, clip: float = DEFAULT_CLIP,
                   act_clip: float = DEFAULT_CLIP, mse_steps: int = 5, inplace: bool = True) -> nn.Module:
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
    quant = QuantConfig(weight_bits, embed_bits, act_bits, method, "row" if weight_per_row else "tensor",
                        weight_clip=clip, act_clip=act_clip, act_scale="example" if act_per_example else "tensor",
                        mse_steps=mse_steps)
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
                module.dq_spec = _AttentionSpec(*(act[r] for r in (ActRole.QUERY, ActRole.KEY, ActRole.PROBS,
                                                                    ActRole.VALUE)))
                if module.config._attn_implementation != _ATTN_IMPL:
                    # A private config copy: only this module's dispatch changes, the shared
                    # config (masks, output_attentions checks, save_pretrained) stays eager.
                    module.config = copy.copy(module.config)
                    module.config._attn_implementation = _ATTN_IMPL
    for emb in {id(m): m for m in (base.shared, base.encoder.embed_tokens, base.decoder.embed_tokens)}.values():
        emb.__class__ = _quant_embedding_class(type(emb))
        emb.dq_spec = _Spec(weight=eq)
    return model
