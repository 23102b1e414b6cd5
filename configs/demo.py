"""The offline default: the whole pipeline on a generated task, minutes on 2 CPU cores.

    python -m train.main --config configs/demo.py --workdir runs/demo

Generates the demo summarization task (dq_jax.demo_task) and trains a byte-level BPE
tokenizer on it, trains a small teacher from scratch, distills a 2-2-8 student of the same
depth, scores both on the test split with ROUGE and reports sizes. Variants as everywhere,
e.g. `configs/demo.py:wbits=8,ebits=8,abits=8` or `:layers=3-1`.
"""

from configs import common


def get_config(arg: str | None = None):
    c = common.base_config()
    c.stages = "teacher,distill,eval,export"
    c.data.synthetic = "demo"
    c.teacher.scratch = "demo"
    c.teacher.tokenizer = "train"
    c.teacher.learning_rate = 1e-3
    c.teacher.steps = 600
    c.student.layers = "3-3"
    c.data.max_source_length = 128
    c.data.max_target_length = 40
    c.data.min_bucket = 256  # pad every batch to the max lengths: one compiled shape
    c.train.batch_size = 16
    c.train.grad_accum = 1
    c.train.learning_rate = 5e-4
    c.train.warmup_ratio = 0.05
    c.train.steps = 400
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.checkpoint_every = 100
    c.eval.batch_size = 64
    c.eval.num_beams = 1
    c.eval.max_length = 40
    c.eval.no_repeat_ngram_size = 0
    c.eval.max_examples = 200
    return common.finalize(common.apply_variant(c, arg))
