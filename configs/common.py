"""The base config every experiment starts from, and the variant string parser.

A variant string selects the student: `wbits=2,ebits=2,abits=8,layers=6-3` (any subset;
`fp`, `32` or `0` means full precision). Unknown names fail here, naming the allowed ones.
`tbt=W2A8` (or W2A2, W1A8, W1A1) selects a TBT student: `quant.method=tbt`, weights and
embeddings at W bits, activations at A bits (elastic at 1-2 bits), and the learning rate TBT
used for that row where the config gives one (XSum, CNN/DM).
"""

from __future__ import annotations

import ml_collections

VARIANT_KEYS = {
    "wbits": "quant.weight_bits",
    "ebits": "quant.embed_bits",
    "abits": "quant.act_bits",
    "layers": "student.layers",
    "method": "quant.method",
    "mode": "distill.mode",
    "weighted": "distill.weights",
    "steps": "train.steps",
    "tbt": "quant.method",
}
# TBT rows (Liu et al. 2023): (weight and embedding bits, activation bits).
TBT_PRESETS = {"W2A8": (2, 8), "W2A2": (2, 2), "W1A8": (1, 8), "W1A1": (1, 1)}
# The learning rates TBT trained each row with.
TBT_LR_XSUM = {"W2A8": 3e-4, "W2A2": 3.5e-4, "W1A8": 2.5e-4, "W1A1": 5e-4}
TBT_LR_CNN_DM = {"W2A8": 1e-4, "W2A2": 7e-4, "W1A8": 1.5e-4, "W1A1": 5e-4}
_FP = ("fp", "32", "none", "")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Stages run in order; each one resumes from what the workdir already holds.
    c.stages = "teacher,distill,eval,export"
    c.mesh = (1, 1, 1)  # (data, fsdp, tensor); -1 in one place takes the remaining devices
    c.dtype = "float32"  # compute dtype; params stay fp32

    # Multi-process runs (one process per host): the coordinator's host:port, process count and
    # this process's id; empty values come from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    # JAX_PROCESS_ID, or `auto` lets JAX detect Slurm, Open MPI or a Cloud TPU pod.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    c.distributed.auto = False
    c.distributed.heartbeat_timeout = 100  # seconds until the others stop when a process dies
    c.distributed.initialization_timeout = 300
    c.distributed.cpu_collectives = "gloo"

    c.teacher = ml_collections.ConfigDict()
    c.teacher.path = ""  # HF directory or hub id; empty with `scratch` set: train one here
    c.teacher.scratch = ""  # a size from dq_jax.pipeline.SCRATCH_SIZES, trained from scratch
    c.teacher.tokenizer = ""  # defaults to teacher.path
    c.teacher.finetune = True  # run the teacher stage on an HF teacher (False: use it as is)
    c.teacher.learning_rate = 3e-5
    c.teacher.steps = 0  # 0: train.epochs epochs
    c.teacher.epochs = 3

    c.student = ml_collections.ConfigDict()
    c.student.layers = "6-6"
    c.student.encoder_map = ""  # explicit teacher layers, e.g. "0,2,5"; empty: the rule
    c.student.decoder_map = ""

    c.quant = ml_collections.ConfigDict()
    c.quant.weight_bits = 2  # 0 = full precision (likewise embed_bits, act_bits)
    c.quant.embed_bits = 2
    c.quant.act_bits = 8
    c.quant.method = "dq_bart"
    c.quant.weight_granularity = "tensor"
    c.quant.act_scale = "tensor"
    c.quant.quantize_lm_head = False
    c.quant.weight_clip = 2.5
    c.quant.act_clip = 2.5

    c.distill = ml_collections.ConfigDict()
    c.distill.mode = "dq_bart"
    c.distill.weights = (1.0, 1.0)  # (logits, intermediate); the "weighted" variant: (0.8, 3.0)
    c.distill.enabled = True  # False: quantization-only baseline (task loss, no teacher)

    c.data = ml_collections.ConfigDict()
    c.data.synthetic = ""  # "demo": generate the offline demo task into the workdir
    c.data.name = ""
    c.data.subset = ""
    c.data.train_files = ""  # comma-separated local files
    c.data.validation_files = ""
    c.data.test_files = ""
    c.data.source_column = "document"
    c.data.target_column = "summary"
    c.data.max_source_length = 1024
    c.data.max_target_length = 128
    c.data.max_examples = 0  # per split; 0 = all
    c.data.min_bucket = 16  # batches pad to a power of two >= this (capped at the max lengths)
    c.data.src_lang = ""
    c.data.tgt_lang = ""

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 8
    c.train.grad_accum = 2
    c.train.learning_rate = 3e-5
    c.train.weight_decay = 0.0
    c.train.warmup_ratio = 0.05
    c.train.grad_clip = 0.0
    c.train.epochs = 20
    c.train.steps = 0  # > 0 overrides epochs
    c.train.log_every = 50
    c.train.eval_every = 0  # 0: after each epoch
    c.train.checkpoint_every = 500

    c.eval = ml_collections.ConfigDict()
    c.eval.metric = "rougeLsum"
    c.eval.batch_size = 16
    c.eval.num_beams = 4
    c.eval.max_length = 142
    c.eval.min_length = 0
    c.eval.length_penalty = 1.0
    c.eval.no_repeat_ngram_size = 3
    c.eval.max_examples = 0

    # Named sweeps for `python -m train.sweep --sweep NAME` (train/sweep.py has the syntax);
    # train.main ignores them.
    c.sweeps = ml_collections.ConfigDict()
    return c


def _bits(value: str) -> int:
    return 0 if value.lower() in _FP else int(value)


def apply_variant(c: ml_collections.ConfigDict, arg: str | None,
                  tbt_learning_rates: dict[str, float] | None = None) -> ml_collections.ConfigDict:
    """Applies `name=value,...` to the config; fails on unknown names or bad values.
    `tbt_learning_rates`: the learning rate of each TBT preset, for configs that have them."""
    if not arg:
        return c
    for item in arg.split(","):
        if "=" not in item:
            raise ValueError(f"Bad variant item {item!r}: write name=value; names: {sorted(VARIANT_KEYS)}.")
        name, value = (s.strip() for s in item.split("=", 1))
        if name not in VARIANT_KEYS:
            raise ValueError(f"Unknown variant name {name!r}; allowed: {sorted(VARIANT_KEYS)}.")
        try:
            if name in ("wbits", "ebits", "abits"):
                c.quant[VARIANT_KEYS[name].split(".")[1]] = _bits(value)
            elif name == "layers":
                enc, dec = (int(v) for v in value.split("-"))
                c.student.layers = f"{enc}-{dec}"
            elif name == "weighted":
                c.distill.weights = (0.8, 3.0) if value.lower() in ("1", "true", "yes") else (1.0, 1.0)
            elif name == "steps":
                c.train.steps = int(value)
            elif name == "tbt":
                preset = value.upper()
                if preset not in TBT_PRESETS:
                    raise ValueError(f"choose one of {sorted(TBT_PRESETS)}")
                c.quant.method = "tbt"
                c.quant.weight_bits = c.quant.embed_bits = TBT_PRESETS[preset][0]
                c.quant.act_bits = TBT_PRESETS[preset][1]
                if tbt_learning_rates:
                    c.train.learning_rate = tbt_learning_rates[preset]
            else:
                section, key = VARIANT_KEYS[name].split(".")
                c[section][key] = value
        except ValueError as e:
            raise ValueError(f"Bad value for variant {name}={value!r}: {e}") from e
    return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.lock()
    return c
