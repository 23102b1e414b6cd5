"""Exact expected values for ROUGE, BLEU and the sentence splitter."""

import pytest
import sacrebleu

from dq_jax.inference import metrics


def test_identical_strings_score_100_on_every_rouge():
    text = "The storm hit Denver on Monday. About 40 thousand homes lost power."
    assert metrics.rouge([text], [text]) == pytest.approx(
        {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0}
    )


def test_rouge_by_hand_and_mean_over_examples():
    # Pair 1: prediction "the cat sat" (3 tokens) vs reference "the cat sat on the mat" (6).
    #   unigrams: 3 shared -> P = 3/3, R = 3/6, F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    #   bigrams: "the cat", "cat sat" shared of 2 vs 5 -> P = 1, R = 2/5, F1 = 0.8 / 1.4 = 4/7
    #   LCS = 3 -> same as unigrams, 2/3
    # Pair 2: "the cat sat on the mat" vs "the cat lay on the mat" (6 tokens each).
    #   unigrams: the x2, cat, on, mat = 5 shared -> F1 = 5/6
    #   bigrams: "the cat", "on the", "the mat" = 3 of 5 each -> F1 = 3/5
    #   LCS "the cat on the mat" = 5 -> F1 = 5/6
    result = metrics.rouge(
        ["the cat sat", "the cat sat on the mat"], ["the cat sat on the mat", "the cat lay on the mat"]
    )
    assert result["rouge1"] == pytest.approx(100 * (2 / 3 + 5 / 6) / 2)  # 75.0
    assert result["rouge2"] == pytest.approx(100 * (4 / 7 + 3 / 5) / 2)  # 58.571...
    assert result["rougeL"] == pytest.approx(100 * (2 / 3 + 5 / 6) / 2)
    assert result["rougeLsum"] == pytest.approx(result["rougeL"])  # one sentence each: no difference


def test_stemming_is_on():
    # Porter stems both "running" and "runs" to "run"; "ran" is irregular and stays apart.
    assert metrics.rouge(["running"], ["runs"])["rouge1"] == pytest.approx(100.0)
    assert metrics.rouge(["ran"], ["runs"])["rouge1"] == pytest.approx(0.0)


def test_rouge_lsum_credits_reordered_sentences_that_rouge_l_does_not():
    # rougeL takes one LCS over the whole text: "a b c" or "d e f", 3 of 6 tokens -> 50.
    # rougeLsum takes the union LCS per reference sentence over newline-split sentences: each
    # reference sentence is found whole, 6 of 6 -> 100. Without our sentence splitting the
    # text would be one "sentence" and rougeLsum would equal rougeL.
    result = metrics.rouge(["D e f. A b c."], ["A b c. D e f."])
    assert result["rougeL"] == pytest.approx(50.0)
    assert result["rougeLsum"] == pytest.approx(100.0)
    assert result["rouge1"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The storm hit Denver. Crews worked all night.", ["The storm hit Denver.", "Crews worked all night."]),
        ("Who won? Maria Lopez did! 2 people lost.", ["Who won?", "Maria Lopez did!", "2 people lost."]),
        (
            "Profit rose 3.5 percent. Shares fell 1.25 percent.",
            ["Profit rose 3.5 percent.", "Shares fell 1.25 percent."],
        ),
        ('He said "we won." Then he left.', ['He said "we won."', "Then he left."]),
        ("It ended. and then nothing", ["It ended. and then nothing"]),  # lowercase: no new sentence
        ("  one sentence without a full stop  ", ["one sentence without a full stop"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert metrics.split_sentences(text) == expected


def test_bleu_identical_corpus_is_100():
    corpus = ["The storm hit Denver on Monday.", "Maria Lopez wins the race."]
    result = metrics.bleu(corpus, corpus)
    assert result["bleu"] == pytest.approx(100.0)
    assert "tok:13a" in result["bleu_signature"]


def test_bleu_matches_sacrebleu_corpus_bleu():
    predictions = ["the cat sat on the mat", "a storm hit the city on monday night"]
    references = ["the cat lay on the mat", "a storm swept through the city on monday"]
    expected = sacrebleu.corpus_bleu(predictions, [references]).score
    assert 0.0 < expected < 100.0
    assert metrics.bleu(predictions, references)["bleu"] == pytest.approx(expected)


@pytest.mark.parametrize("fn", [metrics.rouge, metrics.bleu])
def test_empty_or_mismatched_inputs_raise(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        fn(["a b", "c d"], ["a b"])


def test_score_dispatches_on_the_metric_family():
    predictions, references = ["the cat sat on the mat"], ["the cat lay on the mat"]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert set(metrics.score(key, predictions, references)) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert metrics.score("bleu", predictions, references) == metrics.bleu(predictions, references)
    with pytest.raises(ValueError, match="Unknown task metric 'meteor'"):
        metrics.score("meteor", predictions, references)
