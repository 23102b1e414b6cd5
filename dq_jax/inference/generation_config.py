"""Decoding settings with HF's semantics (`GenerationConfig`), read from a model's config and written
as HF's generation_config.json. The values come checked from the run's settings
(train/settings.py) or the command line; nothing here checks them again."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from dq_jax.model.config import ModelConfig

# ModelConfig.hf_extra keys that HF copies into a model's GenerationConfig (legacy config.json).
_LEGACY_KEYS = ("num_beams", "max_length", "min_length", "length_penalty", "no_repeat_ngram_size", "early_stopping")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings, HF semantics. `max_length`/`min_length` count the decoder start token."""

    num_beams: int = 1
    max_length: int = 20
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool | str = True
    decoder_start_token_id: int = 2
    pad_token_id: int = 1
    eos_token_id: int = 2
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None

    def replace(self, **changes) -> GenerationConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **overrides) -> GenerationConfig:
        """Token ids from the model config (and legacy generation keys of its config.json, as HF
        reads them), then `overrides`. A missing decoder start token falls back to BOS, as in HF."""
        extra = json.loads(cfg.hf_extra)
        kw: dict[str, Any] = {k: extra[k] for k in _LEGACY_KEYS if extra.get(k) is not None}
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.bos_token_id
        kw.update(
            decoder_start_token_id=start,
            pad_token_id=cfg.pad_token_id,
            eos_token_id=cfg.eos_token_id,
            forced_bos_token_id=cfg.forced_bos_token_id,
            forced_eos_token_id=cfg.forced_eos_token_id,
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf_dict(self) -> dict[str, Any]:
        """Keys of HF's generation_config.json (None-valued forced tokens left out)."""
        d = dataclasses.asdict(self)
        d["length_penalty"] = float(d["length_penalty"])
        return {k: v for k, v in d.items() if v is not None}
