"""bench.generate's workers, one subprocess per row (`python -m bench.generate --worker MODE ...`):
dq-jax in each compute mode (and the control), HF `generate` and CTranslate2."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from bench.common import quant_config, timeit
from bench.generate_setup import QUANT, _inputs

OURS = ("fake/fp32", "codes/fp32", "codes/bf16")
PEERS = ("hf/fp32", "ct2/int8", "ct2/fp32")
# The control: what the peers compute (same weights, full-precision activations), in our code.
CONTROL = "fake/fp32 2-2-fp"


def generated(seqs, eos: int, pad: int) -> list[list[int]]:
    """`[B, L]` sequences with the start token first -> per row the tokens after it, up to and
    including the first EOS (trailing padding dropped when there is none)."""
    out = []
    for row in np.asarray(seqs)[:, 1:].tolist():
        if eos in row:
            row = row[: row.index(eos) + 1]
        while row and row[-1] == pad:
            row.pop()
        out.append(row)
    return out


def _matmul_floor(model, params, cfg, ids, am, sequences, gen) -> dict:
    """What the weight products alone cost: every decoding step multiplies the [batch*beams,
    d_model] states by each decoder weight matrix (self-attention q/k/v/out, cross-attention
    q/out, fc1, fc2; the cross keys/values are computed once) and by the LM head. With the
    encoder timed alone, `encoder + steps x (those products)` is a floor for any
    implementation whose fp32 matmuls run at XLA's speed on this machine (at these row counts
    the products stream the weights from memory)."""
    import jax
    import jax.numpy as jnp

    rows = ids.shape[0] * gen.num_beams
    layer = params["decoder"]["layers_0"]
    mats = [layer[m]["kernel"] for m in ("fc1", "fc2")]
    mats += [layer["self_attn"][m]["kernel"] for m in ("q_proj", "k_proj", "v_proj", "out_proj")]
    mats += [layer["encoder_attn"][m]["kernel"] for m in ("q_proj", "out_proj")]
    weights = [jax.device_put(np.array(m)) for _ in range(cfg.decoder_layers) for m in mats]  # distinct buffers
    head = params["lm_head"]["kernel"].T if "lm_head" in params else params["shared"]["embedding"]

    @jax.jit
    def products(ws, head, h):
        outs = [jnp.sum(h[:, : w.shape[0]] @ w) for w in ws]
        return sum(outs) + jnp.sum(jnp.einsum("td,vd->tv", h[:, : head.shape[1]], head))

    h = jnp.ones((rows, max(cfg.d_model, cfg.decoder_ffn_dim)), jnp.float32)
    step_s = timeit(lambda: products(weights, head, h).block_until_ready(), warmup=1, repeat=5)
    enc = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=model.encode).last_hidden_state)
    enc_s = timeit(lambda: enc(params, ids, am).block_until_ready(), warmup=1, repeat=3)
    steps = int((np.asarray(sequences) != gen.pad_token_id).any(0).sum()) - 1
    nbytes = sum(w.nbytes for w in weights) + np.asarray(head).nbytes
    return {
        "encoder_s": enc_s,
        "steps": steps,
        "products_ms_per_step": 1e3 * step_s,
        "weight_mib_per_step": nbytes / 2**20,
        "floor_s": enc_s + steps * step_s,
    }


def worker_jax(d: str, mode: str, repeat: int) -> dict:
    import jax
    import jax.numpy as jnp

    from dq_jax.inference.generate import generate
    from dq_jax.inference.quantized_model import quantized_student
    from dq_jax.model import hf
    from dq_jax.model.modeling import Seq2SeqLM

    ids, am, gen = _inputs(d)
    cfg, params = hf.load_pretrained(f"{d}/student")
    params = jax.device_put(params)
    if mode == CONTROL:
        quant, dtype = quant_config((*QUANT[:2], None), "fake"), jnp.float32
    else:
        compute, precision = mode.split("/")
        quant, dtype = quant_config(QUANT, compute), jnp.bfloat16 if precision == "bf16" else jnp.float32
    # as evaluation and train.generate run a fixed student: weights quantized once, resident as
    # int8 codes (fake mode dequantizes them in each product)
    model, codes_params = quantized_student(cfg, quant, params, dtype)
    t = time.perf_counter()
    out = generate(model, codes_params, ids, am, gen)
    out.sequences.block_until_ready()
    compile_s = time.perf_counter() - t
    secs = timeit(
        lambda: generate(model, codes_params, ids, am, gen).sequences.block_until_ready(), warmup=1, repeat=repeat
    )
    result = {
        "s": secs,
        "compile_s": compile_s,
        "sequences": generated(out.sequences, gen.eos_token_id, gen.pad_token_id),
    }
    if mode == "fake/fp32":
        result["matmul_floor"] = _matmul_floor(
            Seq2SeqLM(cfg, quant, dtype=dtype), params, cfg, ids, am, out.sequences, gen
        )
    return result


def worker_hf(d: str, threads: int, repeat: int) -> dict:
    import torch
    import transformers

    ids, am, gen = _inputs(d)
    torch.set_num_threads(threads)
    model = transformers.BartForConditionalGeneration.from_pretrained(f"{d}/hf").eval()
    t_ids, t_am = torch.tensor(ids), torch.tensor(am)
    kwargs = dict(
        num_beams=gen.num_beams,
        do_sample=False,
        max_length=gen.max_length,
        min_length=gen.min_length,
        length_penalty=gen.length_penalty,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
        early_stopping=gen.early_stopping,
        decoder_start_token_id=gen.decoder_start_token_id,
        pad_token_id=gen.pad_token_id,
        eos_token_id=gen.eos_token_id,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )

    def run():
        with torch.no_grad():
            return model.generate(input_ids=t_ids, attention_mask=t_am, **kwargs)

    seqs = run().numpy()
    return {"s": timeit(run, warmup=0, repeat=repeat), "sequences": generated(seqs, gen.eos_token_id, gen.pad_token_id)}


def worker_ct2(d: str, compute_type: str, threads: int, repeat: int) -> dict:
    import ctranslate2

    ids, am, gen = _inputs(d)
    model_dir = f"{d}/ct2_{compute_type}"
    with open(os.path.join(model_dir, "shared_vocabulary.json")) as f:
        vocab = json.load(f)
    index = {tok: i for i, tok in enumerate(vocab)}
    tr = ctranslate2.Translator(
        model_dir, device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=threads
    )
    source = [[vocab[t] for t, m in zip(row, mask) if m] for row, mask in zip(ids.tolist(), am.tolist())]
    kwargs = dict(
        beam_size=gen.num_beams,
        length_penalty=gen.length_penalty,
        max_decoding_length=gen.max_length - 1,
        min_decoding_length=max(gen.min_length - 1, 0),
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
        return_end_token=True,
        max_batch_size=0,
    )
    run = lambda: tr.translate_batch(source, **kwargs)
    res = run()
    seqs = [[index[t] for t in r.hypotheses[0]] for r in res]
    return {"s": timeit(run, warmup=0, repeat=repeat), "compute_type": tr.compute_type, "sequences": seqs}
