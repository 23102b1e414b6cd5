"""Frozen run settings: what `train/` builds from an ml_collections config, once."""

from __future__ import annotations

import dataclasses

from dq_jax.data import DataConfig
from dq_jax.quant_config import QuantConfig

STAGES = ("teacher", "distill", "eval", "export")

# Teachers trained from scratch here (`teacher.scratch`); vocabulary and special tokens come
# from the tokenizer.
SCRATCH_SIZES = {
    "demo": dict(d_model=128, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, max_position_embeddings=256),
    "small": dict(d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
    "base": dict(),  # BART-base shapes (ModelConfig defaults)
}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 3e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float = 0.0
    epochs: int = 1
    steps: int = 0  # > 0 overrides epochs
    log_every: int = 50
    eval_every: int = 0  # 0: after each epoch
    checkpoint_every: int = 500


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    metric: str = "rougeLsum"
    batch_size: int = 16
    num_beams: int = 4
    max_length: int = 142
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    max_examples: int = 0


@dataclasses.dataclass(frozen=True)
class RunSpec:
    seed: int
    stages: tuple[str, ...]
    mesh: tuple[int, int, int]
    dtype: str
    teacher_path: str
    teacher_scratch: str
    tokenizer: str  # a directory, "" (= teacher_path) or "train" (train one on the data)
    teacher_finetune: bool
    teacher_train: TrainSettings
    student_layers: tuple[int, int]
    encoder_map: tuple[int, ...]
    decoder_map: tuple[int, ...]
    quant: QuantConfig
    distill_mode: str
    distill_weights: tuple[float, float]
    distill_enabled: bool
    data: DataConfig
    synthetic_data: str  # "demo": generate the demo task into the workdir
    train: TrainSettings
    eval: EvalSettings
    config_json: str = "{}"  # the resolved config, written to results.json
