"""Task metrics: ROUGE (summarization) and sacreBLEU (translation), as the reference scores them.

The reference (HF `run_summarization` as used by DQ-BART) strips predictions and references,
splits them into sentences with nltk's `sent_tokenize`, joins the sentences with newlines and
scores with `rouge_score` (stemming on), reporting F-measure x 100. The newlines only matter for
ROUGE-Lsum, which computes a summary-level LCS over newline-separated sentences. nltk's punkt
data cannot be fetched offline, so `split_sentences` is a small regex stand-in (see there).
"""

from __future__ import annotations

import re

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TASK_METRICS = (*ROUGE_KEYS, "bleu")

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket), then
# whitespace, then something that can start a sentence: an uppercase letter, a digit or an
# opening quote. Requiring the whitespace keeps decimals ("3.5") and requiring the capital
# keeps most lowercase continuations ("e.g. this") together. Abbreviations followed by a
# capitalised name ("Dr. Smith") are split; punkt would not, but the effect on ROUGE-Lsum is
# small and the demo task has no abbreviations.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u2019\u201d)\]]))\s+(?=[A-Z0-9\"'\u2018\u201c(\[])")


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences (stripped, empty ones dropped)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _check_pairs(predictions: list[str], references: list[str]) -> None:
    if len(predictions) == 0:
        raise ValueError("No predictions to score: got an empty list.")
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} references; they must pair up one to one."
        )


def _one_sentence_per_line(text: str) -> str:
    return "\n".join(split_sentences(text))


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure x 100 over examples, stemming on.

    Every text is split into sentences joined by newlines first (the reference's
    postprocessing); only ROUGE-Lsum looks at the newlines, the others tokenize them away.
    The reference reports the bootstrap median of the mean; we report the plain mean.
    """
    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = {key: [] for key in ROUGE_KEYS}
    for prediction, reference in zip(predictions, references):
        # rouge_score's signature is score(target, prediction).
        scores = scorer.score(_one_sentence_per_line(reference), _one_sentence_per_line(prediction))
        for key in ROUGE_KEYS:
            totals[key].append(scores[key].fmeasure)
    return {key: float(np.mean(values) * 100.0) for key, values in totals.items()}


def bleu(predictions: list[str], references: list[str]) -> dict[str, float | str]:
    """Corpus BLEU from sacreBLEU with its defaults (13a tokenization), one reference each."""
    _check_pairs(predictions, references)
    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score([p.strip() for p in predictions], [[r.strip() for r in references]])
    return {"bleu": float(result.score), "bleu_signature": str(metric.get_signature())}


def score(task_metric: str, predictions: list[str], references: list[str]) -> dict[str, float | str]:
    """All metrics of the family `task_metric` belongs to (ROUGE or BLEU).

    The caller picks `result[task_metric]` to choose the best checkpoint and logs the rest.
    """
    if task_metric in ROUGE_KEYS:
        return rouge(predictions, references)
    if task_metric == "bleu":
        return bleu(predictions, references)
    raise ValueError(f"Unknown task metric {task_metric!r}; expected one of {', '.join(TASK_METRICS)}.")
