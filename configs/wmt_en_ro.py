"""WMT16 English -> Romanian with an mBART-large teacher, scored with sacreBLEU.

    python -m train.main --config configs/wmt_en_ro.py:wbits=8,ebits=8,abits=8,layers=12-12 --workdir runs/enro

Hub data `wmt/wmt16` (ro-en) needs a column mapping; local jsonl files with `en` and `ro`
columns (as ../shared/data/wmt16_en_ro) work directly. Language codes en_XX -> ro_RO: the
decoder starts with the target code (forced BOS), as mBART was trained.
"""

from configs import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.teacher.path = "facebook/mbart-large-en-ro"
    c.student.layers = "12-12"
    c.data.source_column, c.data.target_column = "en", "ro"
    c.data.src_lang, c.data.tgt_lang = "en_XX", "ro_RO"
    c.data.max_source_length, c.data.max_target_length = 128, 128
    c.train.batch_size, c.train.grad_accum = 8, 2
    c.train.learning_rate, c.train.epochs, c.train.warmup_ratio = 3e-5, 20, 0.05
    c.eval.metric = "bleu"
    c.eval.num_beams, c.eval.length_penalty = 5, 1.0
    c.eval.min_length, c.eval.max_length, c.eval.no_repeat_ngram_size = 0, 128, 0
    return common.finalize(common.apply_variant(c, arg))
