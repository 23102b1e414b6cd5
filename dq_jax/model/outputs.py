"""What the model returns: typed outputs of the encoder, the decoder and the whole model, with the
shapes of every field (HF's names)."""

from __future__ import annotations

import flax
import jax

from dq_jax.model.kv_cache import DecoderCache


@flax.struct.dataclass
class EncoderOutput:
    last_hidden_state: jax.Array  # [B, S, D]
    hidden_states: tuple | None = None  # L+1 x [B, S, D]; 0 = embedding output
    attentions: tuple | None = None  # L x [B, H, S, S]


@flax.struct.dataclass
class DecoderOutput:
    logits: jax.Array  # [B, T, V], fp32
    hidden_states: tuple | None = None
    attentions: tuple | None = None  # L x [B, H, T, T]
    cross_attentions: tuple | None = None  # L x [B, H, T, S]
    cache: DecoderCache | None = None  # with `decode(cache=...)`: advanced past the new positions


@flax.struct.dataclass
class Seq2SeqOutput:
    logits: jax.Array
    encoder_last_hidden_state: jax.Array
    encoder_hidden_states: tuple | None = None
    decoder_hidden_states: tuple | None = None
    encoder_attentions: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None
