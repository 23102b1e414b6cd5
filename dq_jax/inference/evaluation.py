"""Scoring a model on a split: beam-search generation for every example, then the metric."""

from __future__ import annotations

import dataclasses

import jax
from tqdm import tqdm

from dq_jax.data import batches as data_lib
from dq_jax.data.columns import Tokenized
from dq_jax.inference import metrics as metrics_lib
from dq_jax.inference.generate import decode_texts, generate
from dq_jax.inference.generation_config import GenerationConfig
from dq_jax.inference.quantized_model import quantized_student
from dq_jax.model.config import ModelConfig
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.parallel import distributed


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Generation and scoring on dev (picks the best checkpoint) and test."""

    metric: str  # a `dq_jax.inference.metrics` name: rougeLsum, bleu, ...
    batch_size: int
    num_beams: int
    max_length: int
    min_length: int
    length_penalty: float
    no_repeat_ngram_size: int  # 0: no constraint
    max_examples: int  # 0: the whole split


def generation_config(cfg: ModelConfig, ev: EvalSettings) -> GenerationConfig:
    return GenerationConfig.from_model_config(
        cfg,
        num_beams=ev.num_beams,
        max_length=ev.max_length,
        min_length=ev.min_length,
        length_penalty=ev.length_penalty,
        no_repeat_ngram_size=ev.no_repeat_ngram_size,
    )


def evaluate(
    model: Seq2SeqLM,
    params,
    split: Tokenized,
    batching: data_lib.Batching,
    ev: EvalSettings,
    tokenizer,
    desc: str = "eval",
) -> tuple[dict, list[str]]:
    """(scores, predictions) for the first `ev.max_examples` examples of `split` (all when 0),
    batched by `batching`."""
    gen = generation_config(model.cfg, ev)
    n = len(split) if not ev.max_examples else min(ev.max_examples, len(split))
    subset = split.head(n)
    preds: list[str | None] = [None] * n
    batches = list(batching.eval(subset, ev.batch_size))
    # Every process generates the whole split on its own devices from a host copy of the
    # params: the scores agree everywhere, so all processes keep the same best checkpoint.
    params = distributed.to_host(params) if jax.process_count() > 1 else params
    if model.quant is not None and model.quant.enabled:  # quantized once, not in every decode step
        model, params = quantized_student(model.cfg, model.quant, params, model.dtype)
    for idx, batch in tqdm(batches, desc=desc, leave=False, disable=not distributed.is_main()):
        out = generate(model, params, batch["input_ids"], batch["attention_mask"], gen)
        for i, text in zip(idx, decode_texts(tokenizer, out.sequences)[: len(idx)]):
            preds[i] = text.strip()
    refs = list(subset.references)
    return metrics_lib.score(ev.metric, preds, refs), preds
