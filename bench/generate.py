"""Beam-search throughput: our jit-compiled `dq_jax.generate` vs HF PyTorch `generate`, same weights.

    python -m bench.generate [--preset tiny|base] [--beams 4] [--max-length N] [--repeat 3]
                             [--torch-threads 2,1]

A random HF BART at the preset's size is saved and loaded back through `dq_jax.hf`, so both
sides run identical weights with identical settings (length penalty 2.0, no_repeat_ngram_size
3, forced EOS, early stopping). Generated tokens are counted the same way for both: non-pad
tokens after the decoder start token. Compile time (JAX) and the first call (both) are warm-up
and not timed; PyTorch is timed first,
before JAX compiles anything. Prints a table and writes bench/results/generate_<preset>.json.
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from bench.common import PRESETS, print_table, timeit, write_json

from dq_jax import hf
from dq_jax.generate import GenerationConfig, generate
from dq_jax.modeling import Seq2SeqLM


def _matmul_floor(model, params, cfg, ids, am, sequences, gen) -> dict:
    """What the weight products alone cost: every decoding step multiplies the [batch*beams,
    d_model] states by each decoder weight matrix (self-attention q/k/v/out, cross-attention
    q/out, fc1, fc2; the cross keys/values are computed once) and by the LM head. With the
    encoder timed alone, `encoder + steps x (those products)` is a floor for any
    implementation whose matmuls run at XLA's speed on this machine (at these row counts the
    products stream the weights from memory)."""
    import jax.numpy as jnp
    rows = ids.shape[0] * gen.num_beams
    layer = params["decoder"]["layers_0"]
    mats = [layer[m]["kernel"] for m in ("fc1", "fc2")]
    mats += [layer["self_attn"][m]["kernel"] for m in ("q_proj", "k_proj", "v_proj", "out_proj")]
    mats += [layer["encoder_attn"][m]["kernel"] for m in ("q_proj", "out_proj")]
    weights = [jax.device_put(np.array(m)) for _ in range(cfg.decoder_layers) for m in mats]  # distinct buffers
    head = params["shared"]["embedding"]

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
    return {"encoder_s": enc_s, "steps": steps, "products_ms_per_step": 1e3 * step_s,
            "weight_mib_per_step": nbytes / 2**20, "floor_s": enc_s + steps * step_s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=None, help="default: the preset's target length")
    ap.add_argument("--min-length", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--torch-threads", default="",
                    help="comma-separated torch thread counts to time (default: torch's default and 1; on a "
                         "shared machine torch's OpenMP threads stall at barriers when a core is taken)")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    cfg = p["model"]
    max_length = args.max_length or p["target"]

    torch.manual_seed(0)
    hf_cfg = transformers.BartConfig(**cfg.to_hf_dict())
    torch_model = transformers.BartForConditionalGeneration(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        torch_model.save_pretrained(d)
        cfg, params = hf.load_pretrained(d)
    params = jax.device_put(params)

    rng = np.random.RandomState(0)
    batch, source = p["batch"], p["source"]
    ids = rng.randint(3, cfg.vocab_size, (batch, source))
    am = np.ones_like(ids)
    for b in range(1, batch):  # right padding of different lengths, as real batches have
        am[b, source - b * source // (2 * batch):] = 0
    ids[am == 0] = cfg.pad_token_id

    gen = GenerationConfig.from_model_config(
        cfg, num_beams=args.beams, max_length=max_length, min_length=args.min_length, length_penalty=2.0,
        no_repeat_ngram_size=3, early_stopping=True)
    model = Seq2SeqLM(cfg)

    t_ids, t_am = torch.tensor(ids), torch.tensor(am)
    hf_kwargs = dict(num_beams=gen.num_beams, do_sample=False, max_length=gen.max_length,
                     min_length=gen.min_length, length_penalty=gen.length_penalty,
                     no_repeat_ngram_size=gen.no_repeat_ngram_size, early_stopping=gen.early_stopping,
                     decoder_start_token_id=gen.decoder_start_token_id, pad_token_id=gen.pad_token_id,
                     eos_token_id=gen.eos_token_id, forced_bos_token_id=gen.forced_bos_token_id,
                     forced_eos_token_id=gen.forced_eos_token_id)

    def run_torch():
        with torch.no_grad():
            return torch_model.generate(input_ids=t_ids, attention_mask=t_am, **hf_kwargs)

    theirs = run_torch().numpy()
    threads = ([int(t) for t in args.torch_threads.split(",") if t]
               or sorted({torch.get_num_threads(), 1}, reverse=True))
    torch_rows = []
    for n in threads:
        torch.set_num_threads(n)
        torch_rows.append((n, timeit(run_torch, warmup=1, repeat=args.repeat)))
    # PyTorch first, then a pause: the two runtimes' spinning worker threads slow each other down
    # for a while after their last op, and JAX's compile would too.
    time.sleep(2.0)

    t = time.perf_counter()
    ours = generate(model, params, ids, am, gen)
    ours.sequences.block_until_ready()
    compile_s = time.perf_counter() - t
    jax_s = timeit(lambda: generate(model, params, ids, am, gen).sequences.block_until_ready(),
                   warmup=1, repeat=args.repeat)

    floor = _matmul_floor(model, params, cfg, ids, am, ours.sequences, gen)

    count = lambda seqs: int((np.asarray(seqs)[:, 1:] != gen.pad_token_id).sum())
    ours_np = np.asarray(ours.sequences)
    theirs = np.pad(theirs, ((0, 0), (0, max_length - theirs.shape[1])), constant_values=gen.pad_token_id)
    match = float((ours_np == theirs).all(axis=1).mean())
    rows = [{"impl": "dq_jax jit beam search", "s/batch": jax_s, "gen tokens": count(ours_np),
             "tokens/s": count(ours_np) / jax_s}]
    rows += [{"impl": f"HF PyTorch generate ({n} thr)", "s/batch": secs, "gen tokens": count(theirs),
              "tokens/s": count(theirs) / secs} for n, secs in torch_rows]
    ratio = rows[0]["tokens/s"] / max(r["tokens/s"] for r in rows[1:])  # against HF's best
    print(f"preset {args.preset}: batch {batch}, source {source}, beams {gen.num_beams}, max_length {max_length}, "
          f"d_model {cfg.d_model}, layers {cfg.encoder_layers}-{cfg.decoder_layers}, vocab {cfg.vocab_size}")
    print_table(rows)
    print(f"speed-up (ours / best HF tokens/s): {ratio:.2f}x; JAX compile + first run {compile_s:.1f} s (not timed); "
          f"identical sequences: {match:.0%}")
    best_hf = min(r["s/batch"] for r in rows[1:])
    print(f"matmul floor: encoder {floor['encoder_s']:.2f} s + {floor['steps']} steps x {floor['products_ms_per_step']:.1f} ms "
          f"(the step's weight products alone, {floor['weight_mib_per_step']:.0f} MiB of weights) = "
          f"{floor['floor_s']:.2f} s per batch; ours is {jax_s / floor['floor_s']:.2f}x that floor, which is "
          f"{best_hf / floor['floor_s']:.2f}x faster than HF")
    print("wrote", write_json(f"generate_{args.preset}", {
        "preset": args.preset, "batch": batch, "source": source, "max_length": max_length,
        "generation": gen.to_hf_dict(), "rows": rows, "speedup": ratio, "compile_s": compile_s,
        "sequence_match": match, "matmul_floor": floor, "max_speedup_at_floor": best_hf / floor["floor_s"]}))


if __name__ == "__main__":
    main()
