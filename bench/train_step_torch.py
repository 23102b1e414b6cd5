"""bench.train_step's peer: the same DQ train step in PyTorch, on HF BART patched into the reference
DQ-BART student (`tests.torch_reference.quantize_model`), in fp32 or under bf16 autocast."""

from __future__ import annotations

import time


def _torch_loss(s, t, batch, enc_map, dec_map):
    """The DQ-BART reference loss (METHOD.md), unmasked means, weights 1 and 1."""
    import torch.nn.functional as F

    ce = F.cross_entropy(s.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    loss = ce + F.mse_loss(s.logits, t.logits)
    for sa, ta, m in (
        (s.encoder_attentions, t.encoder_attentions, enc_map),
        (s.decoder_attentions, t.decoder_attentions, dec_map),
        (s.cross_attentions, t.cross_attentions, dec_map),
    ):
        loss = loss + sum(F.mse_loss(sa[i], ta[j]) for i, j in enumerate(m))
    for sh, th, m in (
        (s.encoder_hidden_states, t.encoder_hidden_states, enc_map),
        (s.decoder_hidden_states, t.decoder_hidden_states, dec_map),
    ):
        loss = loss + sum(F.mse_loss(sh[j], th[0 if j == 0 else m[j - 1] + 1]) for j in range(len(sh)))
    enc_s, enc_t = s.encoder_last_hidden_state, t.encoder_last_hidden_state
    return loss + sum(F.mse_loss(enc_s[b], enc_t[b]) for b in range(enc_s.shape[0]))


def worker_torch(d: str, steps: int, mode: str, threads: int, quant: tuple[int, int, int]) -> dict:
    import contextlib

    import numpy as np
    import torch
    import transformers

    from dq_jax.training import distill
    from tests.torch_reference import quantize_model

    torch.set_num_threads(threads)
    teacher = transformers.BartForConditionalGeneration.from_pretrained(
        f"{d}/teacher", attn_implementation="eager"
    ).eval()
    student = transformers.BartForConditionalGeneration.from_pretrained(f"{d}/student", attn_implementation="eager")
    quantize_model(student, *quant)
    student.train()
    enc_map = distill.layer_map(teacher.config.encoder_layers, student.config.encoder_layers)
    dec_map = distill.layer_map(teacher.config.decoder_layers, student.config.decoder_layers)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5, eps=1e-6, weight_decay=0.0)
    batch = {k: torch.tensor(v) for k, v in np.load(f"{d}/batch.npz").items()}
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    # fp32 master weights either way; autocast runs matmuls in bf16 and keeps losses in fp32.
    precision = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode == "torch/bf16" else contextlib.nullcontext
    )

    def step():
        with precision():
            with torch.no_grad():
                t_out = teacher(**inputs, output_hidden_states=True, output_attentions=True)
            s_out = student(**inputs, output_hidden_states=True, output_attentions=True)
            loss = _torch_loss(s_out, t_out, batch, enc_map, dec_map)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    loss0 = step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return dict(step_s=sorted(times)[len(times) // 2], loss=loss0)
