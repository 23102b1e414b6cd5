"""Beam-search throughput: our jit-compiled `dq_jax.generate` vs HF PyTorch `generate`, same weights.

    python bench/generate.py [--preset tiny|base] [--beams 4] [--max-length N] [--repeat 3]
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

sys.path.insert(0, os.path.dirname(__file__))
from common import PRESETS, print_table, timeit, write_json  # noqa: E402

from dq_jax import hf  # noqa: E402
from dq_jax.generate import GenerationConfig, generate  # noqa: E402
from dq_jax.modeling import Seq2SeqLM  # noqa: E402


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
    print("wrote", write_json(f"generate_{args.preset}", {
        "preset": args.preset, "batch": batch, "source": source, "max_length": max_length,
        "generation": gen.to_hf_dict(), "rows": rows, "speedup": ratio, "compile_s": compile_s,
        "sequence_match": match}))


if __name__ == "__main__":
    main()
