"""Named model shapes: teachers trained from scratch here, benchmark presets, and the shapes of
the hub checkpoints the configs name (for size reports offline). `ModelConfig` defaults are
BART-base; each entry lists what differs."""

from __future__ import annotations

from dq_jax.model.config import ModelConfig

SIZES: dict[str, dict] = {
    "demo": dict(
        d_model=128,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        max_position_embeddings=256,
    ),
    "tiny": dict(
        vocab_size=8192,
        d_model=256,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        max_position_embeddings=512,
    ),
    "small": dict(
        d_model=256,
        encoder_layers=4,
        decoder_layers=4,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
    ),
    "base": dict(),
    "large": dict(
        d_model=1024,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
    ),
    "mbart-large": dict(
        model_type="mbart",
        vocab_size=250027,
        d_model=1024,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
        scale_embedding=True,
    ),
}
# Teachers that `teacher.scratch` can train (vocabulary and special tokens come from the tokenizer).
SCRATCH = ("demo", "small", "base")
# Hub checkpoints whose shapes are known without downloading them.
HUB = {
    "facebook/bart-base": "base",
    "facebook/bart-large": "large",
    "facebook/mbart-large-en-ro": "mbart-large",
    "facebook/mbart-large-cc25": "mbart-large",
}


def model_config(name: str, **overrides) -> ModelConfig:
    """The `ModelConfig` of a named size, with `overrides` (e.g. the tokenizer's vocabulary)."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; choose one of {sorted(SIZES)}.")
    return ModelConfig(**{**SIZES[name], **overrides})
