"""`ModelConfig`: the numbers of a BART/mBART model, read from and written to HF config.json."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

MODEL_TYPES = ("bart", "mbart")

# HF config keys that ModelConfig holds as fields (everything else rides along in `hf_extra`).
_FIELDS = (
    "vocab_size",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "max_position_embeddings",
    "activation_function",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "scale_embedding",
    "init_std",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "tie_word_embeddings",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """BART (post-LN) or mBART (pre-LN with final layer norms); field names follow HF."""

    model_type: str = "bart"
    vocab_size: int = 50265
    d_model: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 12
    decoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    decoder_ffn_dim: int = 3072
    max_position_embeddings: int = 1024
    activation_function: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    scale_embedding: bool = False
    init_std: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int | None = 2
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = 2
    layer_norm_eps: float = 1e-5
    # False: a separate LM head `lm_head.weight` (our HF export of a student whose embedding
    # lookups are quantized while the output projection stays fp32, as in the reference).
    tie_word_embeddings: bool = True
    # Other HF config keys as a JSON object string, so a round trip writes them back unchanged.
    hf_extra: str = "{}"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r} is not supported; this package implements {MODEL_TYPES}.")
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by {side}_attention_heads={heads}.")

    @property
    def pre_layer_norm(self) -> bool:
        """mBART normalizes before each sublayer and adds final encoder/decoder layer norms."""
        return self.model_type == "mbart"

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        model_type = d.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"config.json has model_type={model_type!r}; dq-jax loads BART or mBART checkpoints "
                f"(model_type one of {MODEL_TYPES})."
            )
        missing = [k for k in ("vocab_size", "d_model") if k not in d]
        if missing:
            raise ValueError(f"config.json lacks {missing}; it is not a complete {model_type} config.")
        kwargs = {k: d[k] for k in _FIELDS if k in d}
        extra = {k: v for k, v in d.items() if k not in _FIELDS and k != "model_type"}
        return cls(model_type=model_type, hf_extra=json.dumps(extra, sort_keys=True), **kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        d = json.loads(self.hf_extra)
        d.update({k: getattr(self, k) for k in _FIELDS})
        d["model_type"] = self.model_type
        d["architectures"] = [
            "MBartForConditionalGeneration" if self.model_type == "mbart" else "BartForConditionalGeneration"
        ]
        return d
