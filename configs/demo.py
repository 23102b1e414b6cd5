"""The offline default: the whole pipeline on a generated task, minutes on 2 CPU cores.

    python -m train.main --config configs/demo.py --workdir runs/demo

Generates the demo summarization task (dq_jax.data.demo_task) and trains a byte-level BPE
tokenizer on it, trains a small teacher from scratch, distills a 2-2-8 student of the same
depth, scores both on the test split with ROUGE and reports sizes. Variants as everywhere,
e.g. `configs/demo.py:wbits=8,ebits=8,abits=8` or `:layers=3-1`.

A named sweep, 2-2-8 and 8-8-8 students at three depths with one shared teacher:

    python -m train.sweep --config configs/demo.py --workdir runs/demo_sweep --sweep bits_layers

and `--sweep dq_vs_tbt`: DQ-BART 2-2-8 next to the TBT rows W2A8, W1A8, W2A2 and W1A1.
"""

from configs import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.stages = "teacher,distill,eval,export"
    c.teacher.update(scratch="demo", tokenizer="train", learning_rate=1e-3, steps=600)
    c.student.layers = "3-3"
    c.data.update(
        synthetic="demo", max_source_length=128, max_target_length=40, min_bucket=256
    )  # pad every batch to the max lengths: one compiled shape
    c.train.update(
        batch_size=16,
        grad_accum=1,
        learning_rate=5e-4,
        warmup_ratio=0.05,
        steps=400,
        log_every=20,
        eval_every=200,
        checkpoint_every=100,
    )
    c.eval.update(batch_size=64, num_beams=1, max_length=40, no_repeat_ngram_size=0, max_examples=200)
    # weight and embedding bits move together; 2 x 3 = 6 points, the bits varying slowest
    c.sweeps.bits_layers = [
        {"quant.weight_bits": b, "quant.embed_bits": b, "student.layers": layers}
        for b in (2, 8)
        for layers in ("3-3", "3-2", "3-1")
    ]
    # DQ-BART against the TBT rows; "name" is the point's directory name
    c.sweeps.dq_vs_tbt = [
        {"name": "dq_2-2-8", "quant.method": "dq_bart"},
        {"name": "tbt_W2A8", "quant.method": "tbt"},
        {"name": "tbt_W1A8", "quant.method": "tbt", "quant.weight_bits": 1, "quant.embed_bits": 1},
        {"name": "tbt_W2A2", "quant.method": "tbt", "quant.act_bits": 2},
        {"name": "tbt_W1A1", "quant.method": "tbt", "quant.weight_bits": 1, "quant.embed_bits": 1, "quant.act_bits": 1},
    ]
    return common.finalize(common.apply_variant(c, arg))
