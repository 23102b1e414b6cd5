"""Distillation: teacher -> student layer maps, student initialization, and the loss terms.

The loss follows the DQ-BART reference code (`dq_bart` mode: unmasked MSEs, the last encoder
state counted twice) or a padding-aware variant (`masked` mode). Every term is a small
function returning an fp32 scalar; `distill_loss` adds them up and is jit-able with the
`DistillConfig` as a static argument.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from dq_jax.model.config import ModelConfig

MODES = ("dq_bart", "masked")
IGNORE_INDEX = -100
METRIC_KEYS = ("loss", "task", "logits", "enc_attn", "dec_attn", "cross_attn", "enc_hidden", "dec_hidden", "enc_last")

# The reference code's table for a 6-layer teacher (student depth -> teacher layers). No single
# rounding of evenly spaced points reproduces it: rows 3 and 5 both have a point at exactly 2.5
# and the table rounds it down in row 3 and up in row 5. A search over floor/ceil/round of
# (a*i + b) / c and Bresenham-style selections, a, b, c small linear forms in (n, L), found none.
_SIX_LAYER_TABLE = {1: (5,), 2: (0, 5), 3: (0, 2, 5), 4: (0, 2, 3, 5), 5: (0, 1, 3, 4, 5), 6: (0, 1, 2, 3, 4, 5)}


# ----------------------------------------------------------------------------- layer maps


def layer_map(num_teacher_layers: int, num_student_layers: int, *, side: str = "") -> tuple[int, ...]:
    """Teacher layer index for each student layer, `len == num_student_layers`.

    A 6-layer teacher uses the reference table exactly. Other depths use
    `round_half_up(i * (L - 1) / (n - 1))` (n >= 2): first and last teacher layer kept, the rest
    evenly spread (consecutive gaps differ by at most 1), strictly increasing, identity when
    n == L; a 1-layer student takes the last teacher layer. For L == 6 that formula agrees
    with every table row except n == 3, where it gives (0, 3, 5) instead of (0, 2, 5).
    `side` ("encoder"/"decoder") only makes error messages name the stack.
    """
    what = f"{side} layers" if side else "layers"
    for name, n in (("teacher", num_teacher_layers), ("student", num_student_layers)):
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"The {name} has {n!r} {what}; layer counts must be positive integers.")
    teacher, student = num_teacher_layers, num_student_layers
    if student > teacher:
        raise ValueError(
            f"student has {student} {what} but the teacher only {teacher}; choose at most "
            f"{teacher} {what} for the student (or pass an explicit layer map)."
        )
    if teacher == 6:
        return _SIX_LAYER_TABLE[student]
    if student == 1:
        return (teacher - 1,)
    # Integer form of round-half-up(i * (L-1) / (n-1)): no float ties.
    return tuple((2 * i * (teacher - 1) + (student - 1)) // (2 * (student - 1)) for i in range(student))


def resolve_map(num_teacher: int, num_student: int, explicit: Sequence[int] | None, side: str) -> tuple[int, ...]:
    """`explicit` (validated) if given and non-empty, else `layer_map`'s rule.

    An explicit map may repeat teacher layers; it must have one entry per student layer, each
    in `0..num_teacher-1`.
    """
    if explicit is None or len(explicit) == 0:
        return layer_map(num_teacher, num_student, side=side)
    if len(explicit) != num_student:
        raise ValueError(
            f"The explicit {side} layer map {tuple(explicit)} has {len(explicit)} entries but the "
            f"student has {num_student} {side} layers; give one teacher index per student layer."
        )
    for i, t in enumerate(explicit):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < num_teacher:
            raise ValueError(
                f"The explicit {side} layer map {tuple(explicit)} has index {t!r} at student layer "
                f"{i}, outside the teacher's {side} layers 0..{num_teacher - 1}."
            )
    return tuple(int(t) for t in explicit)


def student_config(
    teacher_cfg: ModelConfig,
    encoder_layers: int,
    decoder_layers: int,
    encoder_map: Sequence[int] | None = None,
    decoder_map: Sequence[int] | None = None,
) -> tuple[ModelConfig, tuple[int, ...], tuple[int, ...]]:
    """The student of `teacher_cfg` at these depths (the teacher's width, heads and vocabulary)
    and its encoder and decoder layer maps (`resolve_map`: explicit maps win)."""
    enc = resolve_map(teacher_cfg.encoder_layers, encoder_layers, encoder_map, "encoder")
    dec = resolve_map(teacher_cfg.decoder_layers, decoder_layers, decoder_map, "decoder")
    return teacher_cfg.replace(encoder_layers=encoder_layers, decoder_layers=decoder_layers), enc, dec


# ----------------------------------------------------------------------------- student init


def _copy_tree(tree: Mapping) -> dict:
    """A fresh nested dict with the same leaves (shared, not copied: no device transfer)."""
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _stack_params(teacher_stack: Mapping, mapping: tuple[int, ...], num_teacher: int, side: str) -> dict:
    missing = [f"layers_{i}" for i in range(num_teacher) if f"layers_{i}" not in teacher_stack]
    if missing:
        raise ValueError(
            f"The teacher's {side} params lack {missing[:3]} although its config has "
            f"{num_teacher} {side} layers; the params and config do not belong together."
        )
    out = {
        k: _copy_tree(v) if isinstance(v, Mapping) else v
        for k, v in teacher_stack.items()
        if not k.startswith("layers_")
    }
    for i, t in enumerate(mapping):
        out[f"layers_{i}"] = _copy_tree(teacher_stack[f"layers_{t}"])
    return out


def init_student(
    teacher_cfg: ModelConfig,
    teacher_params: Mapping,
    encoder_layers: int,
    decoder_layers: int,
    encoder_map: Sequence[int] | None = None,
    decoder_map: Sequence[int] | None = None,
) -> tuple[ModelConfig, dict]:
    """Student of the teacher's width: layer i of each stack copies teacher layer `map[i]`.

    Everything outside the layers (shared embedding, positions, `layernorm_embedding`, mBART's
    final `layer_norm`, `final_logits_bias`) is taken as is. Leaves are shared with the
    teacher (numpy or jax arrays alike); only the dict structure is new.
    Returns `(student_cfg, student_params)`; the maps used are `resolve_map(...)`'s.
    """
    student_cfg, enc, dec = student_config(teacher_cfg, encoder_layers, decoder_layers, encoder_map, decoder_map)
    maps = {"encoder": enc, "decoder": dec}
    params = {}
    for key, value in teacher_params.items():
        if key in maps:
            params[key] = _stack_params(value, maps[key], getattr(teacher_cfg, f"{key}_layers"), key)
        else:
            params[key] = _copy_tree(value) if isinstance(value, Mapping) else value
    return student_cfg, params


# ----------------------------------------------------------------------------- loss config


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Which loss and how much of each part; hashable, so it can be a static jit argument.

    `mode`: `dq_bart` (the reference: unmasked MSEs, padding included, last encoder state
    counted twice) or `masked` (MSEs over real tokens only, each term once).
    `encoder_map`/`decoder_map`: teacher layer per student layer (the caller fills them with
    `resolve_map`); empty means `layer_map`'s rule on the depths seen in the outputs.
    """

    mode: str = "dq_bart"
    logit_weight: float = 1.0
    inter_weight: float = 1.0
    encoder_map: tuple[int, ...] = ()
    decoder_map: tuple[int, ...] = ()

    def __post_init__(self):
        # lists (from ml_collections) would make the config unhashable for jit
        object.__setattr__(self, "encoder_map", tuple(int(i) for i in self.encoder_map))
        object.__setattr__(self, "decoder_map", tuple(int(i) for i in self.decoder_map))

    @property
    def uses_teacher(self) -> bool:
        """False when both distillation weights are 0: the step trains on the task loss only."""
        return self.logit_weight > 0 or self.inter_weight > 0


# ----------------------------------------------------------------------------- loss terms


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _mean(sq: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of `sq` over the entries where `mask` (broadcastable to `sq`) is 1; all if None."""
    if mask is None:
        return jnp.mean(sq)
    mask = jnp.broadcast_to(_f32(mask), sq.shape)
    return jnp.sum(sq * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _mse(s: jax.Array, t: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if s.shape != t.shape:
        raise ValueError(
            f"Student and teacher tensors differ in shape: {s.shape} vs {t.shape}; the student "
            "must keep the teacher's width, heads and batch."
        )
    return _mean(jnp.square(_f32(s) - _f32(t)), mask)


def task_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy of logits `[B, T, V]` against labels `[B, T]`, mean over labels != -100.

    A batch with no valid label gives 0 (not NaN).
    """
    valid = labels != IGNORE_INDEX
    logp = jax.nn.log_softmax(_f32(logits), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]  # [B, T]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def logits_mse(s: jax.Array, t: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """MSE of logits `[B, T, V]`: over all B*T*V entries, or (mask `[B, T]`) over real tokens x V."""
    return _mse(s, t, None if mask is None else mask[..., None])


def attention_mse(
    s_list: Sequence[jax.Array],
    t_list: Sequence[jax.Array],
    mapping: Sequence[int],
    q_mask: jax.Array | None = None,
    k_mask: jax.Array | None = None,
) -> jax.Array:
    """Sum over student layers i of MSE(s[i], t[mapping[i]]), probabilities `[B, H, T, S]`.

    With masks (q `[B, T]`, k `[B, S]`; a missing one counts as all real) the mean runs over
    entries whose query and key are both real.
    """
    _check_lengths(mapping, len(s_list), len(t_list), "attention")
    mask = None
    if q_mask is not None or k_mask is not None:
        b, _, t, s = s_list[0].shape
        q = jnp.ones((b, t)) if q_mask is None else _f32(q_mask)
        k = jnp.ones((b, s)) if k_mask is None else _f32(k_mask)
        mask = q[:, None, :, None] * k[:, None, None, :]  # [B, 1, T, S]
    return sum((_mse(s_list[i], t_list[m], mask) for i, m in enumerate(mapping)), jnp.zeros((), jnp.float32))


def hidden_mse(
    s_list: Sequence[jax.Array], t_list: Sequence[jax.Array], mapping: Sequence[int], mask: jax.Array | None = None
) -> jax.Array:
    """Sum over j of MSE(s[j], t[0 if j == 0 else mapping[j-1] + 1]), states `[B, S, D]`.

    State 0 is the embedding output, state j > 0 the output of layer j-1, so both lists have
    one more entry than there are layers. mask `[B, S]`: mean over real tokens x D.
    """
    _check_lengths(mapping, len(s_list) - 1, len(t_list) - 1, "hidden-state")
    targets = (0,) + tuple(m + 1 for m in mapping)
    m = None if mask is None else mask[..., None]
    return sum((_mse(s, t_list[j], m) for s, j in zip(s_list, targets)), jnp.zeros((), jnp.float32))


def last_encoder_mse(s_last: jax.Array, t_last: jax.Array) -> jax.Array:
    """Reference quirk: `sum_b mean_{S,D} (s[b] - t[b])**2` for states `[B, S, D]`."""
    if s_last.shape != t_last.shape:
        raise ValueError(f"Student and teacher encoder states differ in shape: {s_last.shape} vs {t_last.shape}.")
    return jnp.sum(jnp.mean(jnp.square(_f32(s_last) - _f32(t_last)), axis=(1, 2)))


def _check_lengths(mapping: Sequence[int], student_layers: int, teacher_layers: int, what: str) -> None:
    """Static check (Python ints only) that the map fits the outputs actually passed in."""
    if len(mapping) != student_layers:
        raise ValueError(
            f"The layer map {tuple(mapping)} has {len(mapping)} entries but the student's {what} "
            f"outputs cover {student_layers} layers; the map must match the student depth."
        )
    if any(not 0 <= i < teacher_layers for i in mapping):
        raise ValueError(
            f"The layer map {tuple(mapping)} points outside the teacher's {what} outputs, "
            f"which cover layers 0..{teacher_layers - 1}."
        )


# ----------------------------------------------------------------------------- total


def _masks(batch: Mapping, mode: str) -> tuple[jax.Array | None, jax.Array | None]:
    """(source mask `[B, S]`, target mask `[B, T]`), both None in `dq_bart` mode."""
    if mode == "dq_bart":
        return None, None
    tgt = batch.get("decoder_attention_mask")
    if tgt is None:  # right-padded targets: decoder input t is real iff label t is
        tgt = batch["labels"] != IGNORE_INDEX
    return _f32(batch["attention_mask"]), _f32(tgt)


def _maps(cfg: DistillConfig, student_out, teacher_out) -> tuple[tuple[int, ...], tuple[int, ...]]:
    enc = cfg.encoder_map or layer_map(
        len(teacher_out.encoder_attentions), len(student_out.encoder_attentions), side="encoder"
    )
    dec = cfg.decoder_map or layer_map(
        len(teacher_out.decoder_attentions), len(student_out.decoder_attentions), side="decoder"
    )
    return enc, dec


def _require_intermediates(out, who: str) -> None:
    fields = (
        "encoder_hidden_states",
        "decoder_hidden_states",
        "encoder_attentions",
        "decoder_attentions",
        "cross_attentions",
    )
    missing = [f for f in fields if getattr(out, f) is None]
    if missing:
        raise ValueError(
            f"The {who} output lacks {missing}; with inter_weight > 0 run the model with "
            "output_hidden_states=True and output_attentions=True."
        )


def distill_loss(
    student_out, teacher_out, batch: Mapping[str, jax.Array], cfg: DistillConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and its unweighted terms (all fp32 scalars).

    `student_out`/`teacher_out`: `outputs.Seq2SeqOutput` of the same teacher-forced batch;
    `teacher_out=None` or `not cfg.uses_teacher` -> task loss only. A term whose weight is 0
    is not computed and reported as 0 (so its outputs need not be requested).
    `total = task + logit_weight * logits + inter_weight * (enc_attn + dec_attn + cross_attn
    + enc_hidden + dec_hidden + enc_last)`; `enc_last` is 0 in `masked` mode.
    Returns `(total, metrics)` with `metrics` keyed by `METRIC_KEYS` (`loss` = total).
    """
    zero = jnp.zeros((), jnp.float32)
    m = dict.fromkeys(METRIC_KEYS, zero)
    m["task"] = task_loss(student_out.logits, batch["labels"])
    if teacher_out is not None and cfg.uses_teacher:
        teacher_out = jax.lax.stop_gradient(teacher_out)  # the teacher is never trained
        src, tgt = _masks(batch, cfg.mode)
        if cfg.logit_weight > 0:
            m["logits"] = logits_mse(student_out.logits, teacher_out.logits, tgt)
        if cfg.inter_weight > 0:
            _require_intermediates(student_out, "student")
            _require_intermediates(teacher_out, "teacher")
            s, t = student_out, teacher_out
            enc, dec = _maps(cfg, s, t)
            m["enc_attn"] = attention_mse(s.encoder_attentions, t.encoder_attentions, enc, src, src)
            m["dec_attn"] = attention_mse(s.decoder_attentions, t.decoder_attentions, dec, tgt, tgt)
            m["cross_attn"] = attention_mse(s.cross_attentions, t.cross_attentions, dec, tgt, src)
            m["enc_hidden"] = hidden_mse(s.encoder_hidden_states, t.encoder_hidden_states, enc, src)
            m["dec_hidden"] = hidden_mse(s.decoder_hidden_states, t.decoder_hidden_states, dec, tgt)
            if cfg.mode == "dq_bart":
                m["enc_last"] = last_encoder_mse(s.encoder_last_hidden_state, t.encoder_last_hidden_state)
    inter = sum(m[k] for k in ("enc_attn", "dec_attn", "cross_attn", "enc_hidden", "dec_hidden", "enc_last"))
    m["loss"] = m["task"] + cfg.logit_weight * m["logits"] + cfg.inter_weight * inter
    return m["loss"], m
