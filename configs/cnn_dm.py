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
    c.data.update(
        name="abisee/cnn_dailymail",
        subset="3.0.0",
        source_column="article",
        target_column="highlights",
        max_source_length=1024,
        max_target_length=128,
    )
    c.eval.update(num_beams=4, length_penalty=2.0, min_length=56, max_length=142, no_repeat_ngram_size=3)
    return common.finalize(common.apply_variant(c, arg, common.TBT_LR_CNN_DM))
