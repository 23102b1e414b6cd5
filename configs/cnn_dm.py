"""CNN/DailyMail with a BART-base teacher (METHOD.md: the reference settings).

    python -m train.main --config configs/cnn_dm.py:wbits=8,ebits=8,abits=8 --workdir runs/cnndm_888

Hub data `abisee/cnn_dailymail` (3.0.0: `article` -> `highlights`); local files via
`data.*_files` with your column names. Generation: 4 beams, length penalty 2.0, min 56,
max 142 tokens. TBT rows with TBT's learning rates: `configs/cnn_dm.py:tbt=W2A8` (or W2A2,
W1A8, W1A1).
"""

from configs import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.teacher.path = "facebook/bart-base"
    c.data.name, c.data.subset = "abisee/cnn_dailymail", "3.0.0"
    c.data.source_column, c.data.target_column = "article", "highlights"
    c.data.max_source_length, c.data.max_target_length = 1024, 128
    c.train.batch_size, c.train.grad_accum = 8, 2
    c.train.learning_rate, c.train.epochs, c.train.warmup_ratio = 3e-5, 20, 0.05
    c.eval.metric = "rougeLsum"
    c.eval.num_beams, c.eval.length_penalty = 4, 2.0
    c.eval.min_length, c.eval.max_length, c.eval.no_repeat_ngram_size = 56, 142, 3
    return common.finalize(common.apply_variant(c, arg, common.TBT_LR_CNN_DM))
