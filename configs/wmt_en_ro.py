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
    c.data.update(
        source_column="en",
        target_column="ro",
        src_lang="en_XX",
        tgt_lang="ro_RO",
        max_source_length=128,
        max_target_length=128,
    )
    c.eval.update(metric="bleu", num_beams=5, length_penalty=1.0, min_length=0, max_length=128, no_repeat_ngram_size=0)
    return common.finalize(common.apply_variant(c, arg))
