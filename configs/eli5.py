"""ELI5 long-form question answering with a BART-base teacher.

    python -m train.main --config configs/eli5.py:wbits=2,ebits=2,abits=8 --workdir runs/eli5_228 \
        --config.data.train_files=train.jsonl --config.data.validation_files=dev.jsonl \
        --config.data.test_files=test.jsonl

Question -> answer (`question`, `answer` columns, as in ../shared/data/eli5); ROUGE-Lsum
picks the best checkpoint. Answers are long: target length 256, generation up to 256 tokens.
"""

from configs import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.teacher.path = "facebook/bart-base"
    c.data.update(source_column="question", target_column="answer", max_source_length=128, max_target_length=256)
    c.eval.update(num_beams=4, length_penalty=1.0, min_length=64, max_length=256, no_repeat_ngram_size=3)
    return common.finalize(common.apply_variant(c, arg))
