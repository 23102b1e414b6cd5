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
    c.data.source_column, c.data.target_column = "question", "answer"
    c.data.max_source_length, c.data.max_target_length = 128, 256
    c.train.batch_size, c.train.grad_accum = 8, 2
    c.train.learning_rate, c.train.epochs, c.train.warmup_ratio = 3e-5, 20, 0.05
    c.eval.metric = "rougeLsum"
    c.eval.num_beams, c.eval.length_penalty = 4, 1.0
    c.eval.min_length, c.eval.max_length, c.eval.no_repeat_ngram_size = 64, 256, 3
    return common.finalize(common.apply_variant(c, arg))
