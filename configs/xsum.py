"""XSum with a BART-base teacher (METHOD.md: the reference settings).

    python -m train.main --config configs/xsum.py:wbits=2,ebits=2,abits=8,layers=6-6 --workdir runs/xsum_228

Data from the hub (`EdinburghNLP/xsum`) by default; for local files set
`--config.data.name= --config.data.train_files=... --config.data.validation_files=...
--config.data.test_files=...` (jsonl/json/csv/parquet with `document` and `summary`).
The teacher is first fine-tuned on XSum (the paper distills from a task-fine-tuned teacher);
point `teacher.path` at an already fine-tuned checkpoint and set `teacher.finetune=False` to
skip that. Generation: 6 beams, length penalty 1.0, min 11, max 62 tokens.

TBT rows (ternary/binary weights, elastic activations) with TBT's learning rates:

    python -m train.main --config configs/xsum.py:tbt=W2A8 --workdir runs/xsum_tbt_w2a8   # or W2A2, W1A8, W1A1
"""

from configs import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.teacher.path = "facebook/bart-base"
    c.data.update(
        name="EdinburghNLP/xsum",
        source_column="document",
        target_column="summary",
        max_source_length=1024,
        max_target_length=128,
    )
    c.eval.update(num_beams=6, length_penalty=1.0, min_length=11, max_length=62, no_repeat_ngram_size=3)
    return common.finalize(common.apply_variant(c, arg, common.TBT_LR_XSUM))
