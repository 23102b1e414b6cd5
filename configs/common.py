"""The base config every experiment starts from, and the variant string parser.

A variant string selects the student: `wbits=2,ebits=2,abits=8,layers=6-3` (any subset;
`fp`, `32` or `0` means full precision). Unknown names fail here, naming the allowed ones.
`tbt=W2A8` (or W2A2, W1A8, W1A1) selects a TBT student: `quant.method=tbt`, weights and
embeddings at W bits, activations at A bits (elastic at 1-2 bits), and the learning rate TBT
used for that row where the config gives one (XSum, CNN/DM).
"""

from __future__ import annotations

import ml_collections

from dq_jax.quant.config import QuantConfig

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
    # fp32 | bf16: bf16 runs the float matmuls (teacher, student where an operand is not
    # quantized) in bf16 with fp32 accumulation; weights, optimizer, loss, softmax, norms and
    # quantizer scales stay fp32 (dq_jax/model/precision.py)
    c.precision = "fp32"
    # JAX's persistent compilation cache, so reruns and sweep points reuse compiled steps
    # ("": $DQ_JAX_CACHE/compilation, else ~/.cache/dq_jax/compilation; "off": none)
    c.compilation_cache = ""

    # Multi-process runs (one process per host): the coordinator's host:port, process count and
    # this process's id; empty values come from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    # JAX_PROCESS_ID, or `auto` lets JAX detect Slurm, Open MPI or a Cloud TPU pod.
    c.distributed = ml_collections.ConfigDict(
        dict(
            coordinator_address="",
            num_processes=0,
            process_id=-1,
            auto=False,
            heartbeat_timeout=100,  # seconds until the others stop when a process dies
            initialization_timeout=300,
            cpu_collectives="gloo",
        )
    )

    c.teacher = ml_collections.ConfigDict(
        dict(
            path="",  # HF directory or hub id; empty with `scratch` set: train one here
            scratch="",  # a size from dq_jax.model.sizes.SCRATCH, trained from scratch
            tokenizer="",  # defaults to teacher.path
            finetune=True,  # run the teacher stage on an HF teacher (False: use it as is)
            learning_rate=3e-5,
            steps=0,
            epochs=3,
        )
    )  # steps 0: teacher.epochs epochs

    c.student = ml_collections.ConfigDict(
        dict(
            layers="6-6",
            encoder_map="",
            decoder_map="",  # explicit teacher layers, e.g. "0,2,5"; empty: the rule
            # the fraction of the training split the student trains on, a subset drawn by student.seed
            # (the teacher stage always trains on the whole split)
            train_fraction=1.0,
            seed=-1,
        )
    )  # the distill stage's data order, dropout and subset; -1: the run's `seed`

    c.quant = ml_collections.ConfigDict(
        dict(
            weight_bits=2,
            embed_bits=2,
            act_bits=8,  # 0 = full precision
            method="dq_bart",
            weight_granularity="tensor",
            act_scale="tensor",
            quantize_lm_head=False,
            weight_clip=2.5,
            act_clip=2.5,
            mse_steps=5,  # scale search steps of method=mse
            # products of two quantized operands: "codes" multiplies the integer codes exactly
            # (int8 x int8 -> int32), "fake" dequantizes and multiplies in float (the reference);
            # the default is QuantConfig's (dq_jax/quant/config.py says why)
            compute=QuantConfig.compute,
        )
    )

    c.distill = ml_collections.ConfigDict(
        dict(
            mode="dq_bart",
            weights=(1.0, 1.0),  # (logits, intermediate); the "weighted" variant: (0.8, 3.0)
            enabled=True,
        )
    )  # False: quantization-only baseline (task loss, no teacher)

    c.data = ml_collections.ConfigDict(
        dict(
            synthetic="",  # "demo": generate the offline demo task into the workdir
            name="",
            subset="",
            revision="",  # a `datasets` hub name, configuration and revision
            train_files="",
            validation_files="",
            test_files="",  # comma-separated local files
            source_column="document",
            target_column="summary",
            max_source_length=1024,
            max_target_length=128,
            max_examples=0,  # per split; 0 = all
            min_bucket=16,  # batches pad to a power of two >= this (capped at the max lengths)
            src_lang="",
            tgt_lang="",  # mBART language codes
            # tokenized splits are cached here and reused by every job with the same rows, tokenizer
            # and lengths ("": $DQ_JAX_CACHE, else ~/.cache/dq_jax)
            cache_dir="",
            num_proc=0,
        )
    )  # tokenization processes; 0: the machine's cores

    # METHOD.md's reference training, which the task configs keep.
    c.train = ml_collections.ConfigDict(
        dict(
            batch_size=8,
            grad_accum=2,
            learning_rate=3e-5,
            weight_decay=0.0,
            warmup_ratio=0.05,
            grad_clip=0.0,
            epochs=20,
            steps=0,  # steps > 0 overrides epochs
            log_every=50,
            eval_every=0,  # eval_every 0: after each epoch
            checkpoint_every=500,
            # rematerialization of the trained model's layers: none | full (recompute each layer in
            # the backward) | dots (keep matmul outputs without a batch dimension, recompute the rest)
            remat="none",
            profile_steps="",  # "START,END": a jax.profiler trace of those steps in WORKDIR/profile/
            peak_tflops=0.0,  # per device, for MFU; 0: a known accelerator's table, or measured on CPU
            wandb_project="",
        )
    )  # also log to Weights & Biases (the `wandb` extra); "": TensorBoard only

    c.eval = ml_collections.ConfigDict(
        dict(
            metric="rougeLsum",
            batch_size=16,
            num_beams=4,
            max_length=142,
            min_length=0,
            length_penalty=1.0,
            no_repeat_ngram_size=3,
            max_examples=0,
        )
    )

    # Named sweeps for `python -m train.sweep --sweep NAME`: c.sweeps.NAME is a list of dicts of
    # overrides, one a point, `"name"` optional (train/sweep.py has the syntax); train.main
    # ignores them.
    c.sweeps = ml_collections.ConfigDict()
    return c


def _bits(value: str) -> int:
    return 0 if value.lower() in _FP else int(value)


def apply_variant(
    c: ml_collections.ConfigDict, arg: str | None, tbt_learning_rates: dict[str, float] | None = None
) -> ml_collections.ConfigDict:
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
