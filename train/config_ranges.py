"""The range of every numeric config value: one table, checked before a config becomes a RunSpec,
so a bad value fails with one message naming the dotted key, the value and the range."""

from __future__ import annotations

import math
import numbers

import ml_collections


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # True is an int to Python, not to us


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# Kinds of value: (test, what the message calls it).
INT, NUMBER = (_is_int, "an integer"), (_is_number, "a finite number")


def _at_least(low, why=""):
    return (lambda v: v >= low), f">= {low}" + (f" ({why})" if why else "")


def _above(low):
    return (lambda v: v > low), f"> {low}"


_ANY = (lambda v: True), ""
_MESH_SIZE = (lambda v: v >= 1 or v == -1), ">= 1, or -1 (the devices the other axes leave)"
# Sources and targets are cut to the max length keeping their special tokens (BART: <s> ... </s>,
# mBART: ... </s> lang_code; dq_jax/data/token_cache.py): 3 holds the two specials and one token of
# text. Shorter, a cut row is specials only, or (below 2) longer than the length it is stored as.
_SPECIALS_AND_TEXT = _at_least(3, "two special tokens and one of text")

# (key, kind, (test, bound text), names): every numeric config value, checked before the
# sections become dataclasses so one message names the dotted key, the value and the range.
# `names`: for a tuple value, what its entries are (each must pass); None for a single value.
# Not here: quant.*_bits, which QuantConfig checks against quant.method.
RANGES = (
    ("seed", INT, _at_least(0), None),
    ("mesh", INT, _MESH_SIZE, "(data, fsdp, tensor)"),
    ("teacher.learning_rate", NUMBER, _above(0), None),
    ("teacher.steps", INT, _at_least(0), None),  # 0: teacher.epochs decide
    ("teacher.epochs", INT, _at_least(0), None),
    ("student.train_fraction", NUMBER, ((lambda v: 0 < v <= 1), "in (0, 1]"), None),
    ("student.seed", INT, _at_least(-1, "-1: the run's seed"), None),
    ("quant.weight_clip", NUMBER, _above(0), None),
    ("quant.act_clip", NUMBER, _above(0), None),
    ("quant.mse_steps", INT, _at_least(1), None),
    ("distill.weights", NUMBER, _at_least(0), "(logits, intermediate)"),
    ("data.max_source_length", INT, _SPECIALS_AND_TEXT, None),
    ("data.max_target_length", INT, _SPECIALS_AND_TEXT, None),
    ("data.max_examples", INT, _at_least(0), None),  # 0: all
    ("data.min_bucket", INT, _at_least(1), None),
    ("data.num_proc", INT, _at_least(0), None),  # 0: the machine's cores
    ("train.batch_size", INT, _at_least(1), None),
    ("train.grad_accum", INT, _at_least(1), None),
    ("train.learning_rate", NUMBER, _above(0), None),
    ("train.weight_decay", NUMBER, _at_least(0), None),
    ("train.warmup_ratio", NUMBER, ((lambda v: 0 <= v < 1), "in [0, 1)"), None),  # 1: the whole run is warm-up
    ("train.grad_clip", NUMBER, _at_least(0), None),  # 0: no clipping
    ("train.epochs", INT, _at_least(0), None),
    ("train.steps", INT, _at_least(0), None),  # 0: train.epochs decide
    ("train.log_every", INT, _at_least(1), None),  # steps are logged when step % log_every == 0
    ("train.eval_every", INT, _at_least(0), None),  # 0: after each epoch
    ("train.checkpoint_every", INT, _at_least(1), None),
    ("train.peak_tflops", NUMBER, _at_least(0), None),  # 0: known table or measured
    ("eval.batch_size", INT, _at_least(1), None),
    ("eval.num_beams", INT, _at_least(1), None),
    ("eval.max_length", INT, _at_least(2, "the decoder start token and one generated token"), None),
    ("eval.min_length", INT, _at_least(0), None),  # and < eval.max_length, checked below
    ("eval.length_penalty", NUMBER, _ANY, None),
    ("eval.no_repeat_ngram_size", INT, _at_least(0), None),  # 0: off
    ("eval.max_examples", INT, _at_least(0), None),  # 0: the whole split
    # 0 and -1 mean "from JAX_NUM_PROCESSES / JAX_PROCESS_ID"; DistributedConfig.check() does the rest
    ("distributed.num_processes", INT, _at_least(0), None),
    ("distributed.process_id", INT, _at_least(-1), None),
    ("distributed.heartbeat_timeout", INT, _at_least(1), None),  # seconds
    ("distributed.initialization_timeout", INT, _at_least(1), None),
)


def _get(c: ml_collections.ConfigDict, key: str):
    for part in key.split("."):
        c = c[part]
    return c


def check_ranges(c: ml_collections.ConfigDict) -> None:
    """Every `RANGES` value, then the limits that tie two values together."""
    for key, (is_kind, kind), (ok, bound), names in RANGES:
        value = _get(c, key)
        must = f"{kind} {bound}".strip()
        if names is not None:
            if not (
                isinstance(value, (tuple, list))
                and len(value) == names.count(",") + 1
                and all(is_kind(v) and ok(v) for v in value)
            ):
                raise ValueError(f"{key}={value!r} is out of range: it must be {names}, each {must}.")
        elif not is_kind(value):
            raise ValueError(f"{key}={value!r} is not {kind}: it must be {must}.")
        elif not ok(value):
            raise ValueError(f"{key}={value!r} is out of range: it must be {must}.")
    if list(c.mesh).count(-1) > 1:
        raise ValueError(f"mesh={tuple(c.mesh)} is out of range: at most one axis may be -1.")
    if c.eval.min_length >= c.eval.max_length:
        raise ValueError(
            f"eval.min_length={c.eval.min_length} is out of range: it must be less than "
            f"eval.max_length={c.eval.max_length}."
        )
