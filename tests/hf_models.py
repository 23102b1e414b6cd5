"""Tiny random HF PyTorch BART/mBART models saved to disk, the oracle of the parity tests."""

import numpy as np
import torch
import transformers

TINY = dict(
    vocab_size=99,
    d_model=24,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=3,
    encoder_ffn_dim=20,
    decoder_ffn_dim=28,
    max_position_embeddings=32,
)

CONFIGS = {
    "bart": dict(model_type="bart"),
    "mbart": dict(model_type="mbart"),
    "bart_scaled_relu": dict(model_type="bart", scale_embedding=True, activation_function="relu"),
    # head dims 10 and 6: not powers of two
    "mbart_odd_heads": dict(
        model_type="mbart", d_model=30, encoder_attention_heads=3, decoder_attention_heads=5, scale_embedding=True
    ),
}


def make_hf_model(name: str, seed: int = 0, **overrides):
    """A random HF model in eval mode with eager attention and a non-zero final_logits_bias."""
    spec = dict(TINY, **CONFIGS[name], **overrides)
    model_type = spec.pop("model_type")
    cls, cfg_cls = {
        "bart": (transformers.BartForConditionalGeneration, transformers.BartConfig),
        "mbart": (transformers.MBartForConditionalGeneration, transformers.MBartConfig),
    }[model_type]
    torch.manual_seed(seed)
    model = cls(cfg_cls(attn_implementation="eager", **spec)).eval()
    with torch.no_grad():  # larger than init so that layer norms and biases matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.final_logits_bias.normal_()
    return model


def padded_batch(vocab: int, batch: int = 3, src: int = 9, tgt: int = 7, seed: int = 0, pad: int = 1):
    """Source and target ids with right padding of different lengths on both sides."""
    rng = np.random.RandomState(seed)
    ids, dids = rng.randint(3, vocab, (batch, src)), rng.randint(3, vocab, (batch, tgt))
    am, dam = np.ones_like(ids), np.ones_like(dids)
    for b in range(1, batch):
        am[b, src - 2 * b :] = 0
        dam[b, tgt - b :] = 0
    ids[am == 0], dids[dam == 0] = pad, pad
    return ids, am, dids, dam


def torch_forward(model, ids, am, dids, dam):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(am),
            decoder_input_ids=torch.tensor(dids),
            decoder_attention_mask=torch.tensor(dam),
            output_hidden_states=True,
            output_attentions=True,
        )


def distill_batch(vocab: int, accum: int = 2, batch: int = 8, src: int = 12, tgt: int = 8, seed: int = 0) -> dict:
    """A distillation batch `[A, B, L]` of random ids with right padding of varied lengths,
    decoder inputs shifted from the labels, and -100 labels on padding."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (accum, batch, src)).astype(np.int32)
    labels = rng.randint(3, vocab, (accum, batch, tgt)).astype(np.int32)
    am, dm = np.ones_like(ids), np.ones_like(labels)
    for b in range(batch):
        am[:, b, src - b % 4 :] = 0
        dm[:, b, tgt - b % 3 :] = 0
    ids[am == 0] = 1
    dec = np.concatenate([np.full((accum, batch, 1), 2, np.int32), labels[..., :-1]], -1)
    dec[dm == 0] = 1
    labels = np.where(dm == 1, labels, -100).astype(np.int32)
    return dict(input_ids=ids, attention_mask=am, decoder_input_ids=dec, decoder_attention_mask=dm, labels=labels)


def make_talker(kind: str, vocab_size: int, max_position_embeddings: int, layer_scale: float, eos_bias: float):
    """A tiny random HF model whose generations depend on the source and end at varied lengths:
    layer weights scaled by `layer_scale` and embeddings by 10 (random init is nearly
    source-independent), EOS's logit bias raised by `eos_bias` so many sequences finish early."""
    model = make_hf_model(kind, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "layers" in name:
                p.mul_(layer_scale)
        model.model.shared.weight.mul_(10.0)
        model.final_logits_bias[0, model.config.eos_token_id] += eos_bias
    return model
