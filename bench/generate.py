"""Beam-search throughput of the 2-2-8 student: dq-jax in each compute mode vs HF `generate` and
CTranslate2 int8 on the student's HF export, same weights, same settings.

    python -m bench.generate [--preset tiny|base] [--beams 4] [--max-length N] [--no-repeat-ngram 0]
                             [--repeat 3] [--peer-threads 2,1]

The model: a random HF BART at the preset's size (weights drawn with std 0.1: at HF's 0.02 the
attention is near uniform and every input decodes to the same sequence, which would make the
sequence comparison vacuous; larger stds push more activations past the 8-bit quantizer's clip
at +-2.5) is the teacher; `distill.init_student` takes the preset's student
layers from it (2-1 at `tiny`, 6-3 at `base`). The student quantizes weights to 2 bits,
embeddings to 2 bits and activations to 8 (`QuantConfig(2, 2, 8)`).

Ours, one row per mode `<compute>/<precision>`: `fake/fp32` (the reference), `codes/fp32`
(`QuantConfig(compute="codes")`) and `codes/bf16` (`Seq2SeqLM(..., dtype=jnp.bfloat16)`). A mode
this checkout cannot run is listed as unavailable with the reason. Every mode runs the student
as evaluation and `train.generate` do: weights quantized once (`quantized_student`), resident as
int8 codes. A control row, `fake/fp32
2-2-fp`, runs our code on what the peers compute (the same weights, full-precision
activations): it should reproduce HF's sequences, which shows that the 2-2-8 rows' differences
from HF come from their 8-bit activations, not from the export.

Peers, on `dq_jax.export.hf_dir.export_hf`'s directory for the same student (fake-quantized fp32
weights; PyTorch BART has no activation quantizers, so the peers compute with full-precision
activations and their sequences may differ from ours where 8-bit activations flip a choice):
- `hf/fp32`: `BartForConditionalGeneration.generate`;
- `ct2/int8`: CTranslate2 `Translator(compute_type="int8")` on that directory converted inside
  the bench (`convert_ct2`; int8 weights per row and int8 activations, so it may differ from HF too);
- `ct2/fp32`: the same conversion run in float32, the converter's check: it must reproduce HF's
  sequences (it does on the tiny preset; `tests/test_bench_common.py` checks the conversion too).
Peers are timed at each `--peer-threads` count (default: all cores, and 1) and compared at their
best: their OpenMP threads stall at barriers when another process holds a core.

Settings shared by all: beams, length penalty 2.0, early stopping, `--no-repeat-ngram` (default
0: once a ban bites, CTranslate2's beam scores come out higher than HF's, as if renormalized
after the ban, and its beams can differ; greedy decoding agrees either way. 3 is BART
summarization's setting, and costs HF a Python loop per step),
`max_length` counting the start token (CTranslate2: `max_decoding_length = max_length - 1`),
`min_length` 0 by default (CTranslate2: `min_decoding_length = max(min_length - 1, 0)`; its own
default of 1 would forbid an immediate EOS that HF allows), and no forced BOS/EOS: CTranslate2
has no equivalent of HF's forced-EOS-at-max-length processor, and with it HF's last token and
its beam ranking differ from every implementation without it. Generated tokens are counted
the same way everywhere: tokens after the start token, up to and including EOS. The columns
`= hf`, `= ct2/int8` and `= fake/fp32` give the sequences identical to that row's out of the
batch, then the mean share of tokens before the first difference (random weights make every
choice close, so one flipped token changes the rest of a sequence).

The CTranslate2 conversion: ctranslate2 4.x's BART loader reads `config.normalize_before`,
which transformers 5's `BartConfig` does not define. Chosen: the converter's Python API
(`TransformersConverter`) with that one attribute supplied on the loaded model's config in one
place (`convert_ct2`). Not chosen: a throwaway venv with transformers 4.57 under a cache dir
(a registry download inside a benchmark, a second torch unless the venv shares this one's
site-packages and so mixes two transformers, and another transformers reading the export than
the one the HF peer loads it with), and
writing the attribute into the exported config.json (it would change the artifact the HF peer
loads). Of the attributes reported missing with transformers 4.57 (`normalize_before`,
`add_final_layer_norm`, `scale_embedding`, `static_position_embeddings`), ctranslate2 4.8.5's
BART loader reads only `normalize_before` (`scale_embedding` is still a `BartConfig` field); if a
later release reads more, the conversion fails with an AttributeError naming it. The converter
also needs a tokenizer in the directory: the bench exports the student with a word-level one
(id i <-> token `t<i>`, BART's special tokens at 0-3), and CTranslate2 gets the same ids as
those tokens.

Each row runs in its own subprocess with the same allocator (tcmalloc when installed), so peak
RSS is the row's own. Compile time (JAX) and the first call (all) are warm-up and not timed.
The `fake/fp32` worker also times the matmul floor (see `_matmul_floor`). Prints the CPU line
and a table and writes bench/results/generate_<preset>.json with top-level `cpu` and `speedup`
("<our mode> vs <peer>": the peer's best seconds per batch / ours).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from bench.common import (PRESETS, WorkerError, compute_unavailable, cpu, cpu_line, quant_config, reply,
                          run_worker, speedups, timeit, worker_env, write_json)
from dq_jax.utils.table import format_table

QUANT = (2, 2, 8)
OURS = ("fake/fp32", "codes/fp32", "codes/bf16")
PEERS = ("hf/fp32", "ct2/int8", "ct2/fp32")
# The control: what the peers compute (same weights, full-precision activations), in our code.
CONTROL = "fake/fp32 2-2-fp"
INIT_STD = 0.1
SPECIAL = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3, as in BART's tokenizer


def convert_ct2(hf_dir: str, out_dir: str, quantization: str) -> str:
    """CTranslate2 model of an HF BART/mBART directory (with a tokenizer), weights stored as
    `quantization`. The one workaround (see the module docstring): `normalize_before`, read by
    ctranslate2 4.x's BART loader and gone from transformers 5's configs, is set on the loaded
    model's config when missing: False for BART (post-norm), True for mBART (pre-norm)."""
    from ctranslate2.converters import TransformersConverter

    class _Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            if not hasattr(model.config, "normalize_before"):
                model.config.normalize_before = model.config.model_type == "mbart"
            return model

    return _Converter(hf_dir).convert(out_dir, quantization=quantization, force=True)


def word_tokenizer(vocab_size: int, out_dir: str) -> str:
    """A word-level tokenizer whose token of id i is `t<i>` (BART's special tokens at 0-3)."""
    import transformers
    from tokenizers import Tokenizer, models
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    vocab.update({f"t{i}": i for i in range(len(SPECIAL), vocab_size)})
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                               bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(out_dir)
    return out_dir


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


def prepare(preset_name: str, d: str, gen_overrides: dict) -> dict:
    """Teacher -> student (fp32 master, for our workers) -> its HF export -> CTranslate2 models."""
    import torch
    import transformers
    from dq_jax.training import distill
    from dq_jax.export import hf_dir as export
    from dq_jax.model import hf
    from dq_jax.inference.generation_config import GenerationConfig
    from dq_jax.quant.config import QuantConfig
    p = PRESETS[preset_name]
    torch.manual_seed(0)
    hf_cfg = transformers.BartConfig(**dict(p["model"].to_hf_dict(), init_std=INIT_STD))
    transformers.BartForConditionalGeneration(hf_cfg).save_pretrained(f"{d}/teacher")
    tcfg, tparams = hf.load_pretrained(f"{d}/teacher")
    scfg, sparams = distill.init_student(tcfg, tparams, *p["student_layers"])
    hf.save_pretrained(scfg, sparams, f"{d}/student")
    export.export_hf(scfg, sparams, QuantConfig(*QUANT), f"{d}/hf",
                     tokenizer_dir=word_tokenizer(scfg.vocab_size, f"{d}/tokenizer"))
    convert_s = {}
    for q in ("int8", "float32"):
        t = time.perf_counter()
        convert_ct2(f"{d}/hf", f"{d}/ct2_{q}", q)
        convert_s[q] = time.perf_counter() - t

    rng = np.random.RandomState(0)
    batch, source = p["batch"], p["source"]
    ids = rng.randint(len(SPECIAL), scfg.vocab_size, (batch, source))
    am = np.ones_like(ids)
    for b in range(1, batch):  # right padding of different lengths, as real batches have
        am[b, source - b * source // (2 * batch):] = 0
    ids[am == 0] = scfg.pad_token_id
    np.savez(f"{d}/batch.npz", input_ids=ids, attention_mask=am)
    gen = GenerationConfig.from_model_config(scfg, forced_bos_token_id=None, forced_eos_token_id=None,
                                             **gen_overrides)
    with open(f"{d}/gen.json", "w") as f:
        json.dump(gen.to_hf_dict(), f)
    return {"generation": gen.to_hf_dict(), "convert_s": convert_s, "student": scfg.to_hf_dict()}


def _inputs(d: str):
    from dq_jax.inference.generation_config import GenerationConfig
    b = np.load(f"{d}/batch.npz")
    with open(f"{d}/gen.json") as f:
        return b["input_ids"], b["attention_mask"], GenerationConfig(**json.load(f))


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
    return {"encoder_s": enc_s, "steps": steps, "products_ms_per_step": 1e3 * step_s,
            "weight_mib_per_step": nbytes / 2**20, "floor_s": enc_s + steps * step_s}


def worker_jax(d: str, mode: str, repeat: int) -> dict:
    import jax
    import jax.numpy as jnp
    from dq_jax.model import hf
    from dq_jax.inference.generation_config import GenerationConfig
    from dq_jax.inference.generate import generate
    from dq_jax.model.modeling import Seq2SeqLM
    from dq_jax.inference.quantized_model import quantized_student
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
    secs = timeit(lambda: generate(model, codes_params, ids, am, gen).sequences.block_until_ready(), warmup=1, repeat=repeat)
    result = {"s": secs, "compile_s": compile_s,
              "sequences": generated(out.sequences, gen.eos_token_id, gen.pad_token_id)}
    if mode == "fake/fp32":
        result["matmul_floor"] = _matmul_floor(Seq2SeqLM(cfg, quant, dtype=dtype), params, cfg, ids, am,
                                               out.sequences, gen)
    return result


def worker_hf(d: str, threads: int, repeat: int) -> dict:
    import torch
    import transformers
    ids, am, gen = _inputs(d)
    torch.set_num_threads(threads)
    model = transformers.BartForConditionalGeneration.from_pretrained(f"{d}/hf").eval()
    t_ids, t_am = torch.tensor(ids), torch.tensor(am)
    kwargs = dict(num_beams=gen.num_beams, do_sample=False, max_length=gen.max_length, min_length=gen.min_length,
                  length_penalty=gen.length_penalty, no_repeat_ngram_size=gen.no_repeat_ngram_size,
                  early_stopping=gen.early_stopping, decoder_start_token_id=gen.decoder_start_token_id,
                  pad_token_id=gen.pad_token_id, eos_token_id=gen.eos_token_id, forced_bos_token_id=None,
                  forced_eos_token_id=None)

    def run():
        with torch.no_grad():
            return model.generate(input_ids=t_ids, attention_mask=t_am, **kwargs)

    seqs = run().numpy()
    return {"s": timeit(run, warmup=0, repeat=repeat),
            "sequences": generated(seqs, gen.eos_token_id, gen.pad_token_id)}


def worker_ct2(d: str, compute_type: str, threads: int, repeat: int) -> dict:
    import ctranslate2
    ids, am, gen = _inputs(d)
    model_dir = f"{d}/ct2_{compute_type}"
    with open(os.path.join(model_dir, "shared_vocabulary.json")) as f:
        vocab = json.load(f)
    index = {tok: i for i, tok in enumerate(vocab)}
    tr = ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type, inter_threads=1,
                                intra_threads=threads)
    source = [[vocab[t] for t, m in zip(row, mask) if m] for row, mask in zip(ids.tolist(), am.tolist())]
    kwargs = dict(beam_size=gen.num_beams, length_penalty=gen.length_penalty, max_decoding_length=gen.max_length - 1,
                  min_decoding_length=max(gen.min_length - 1, 0), no_repeat_ngram_size=gen.no_repeat_ngram_size,
                  return_end_token=True, max_batch_size=0)
    run = lambda: tr.translate_batch(source, **kwargs)
    res = run()
    seqs = [[index[t] for t in r.hypotheses[0]] for r in res]
    return {"s": timeit(run, warmup=0, repeat=repeat), "compute_type": tr.compute_type, "sequences": seqs}


def agreement(seqs: list[list[int]], ref: list[list[int]] | None) -> str:
    """"<identical>/<batch> <mean share of tokens before the first difference>" or "-"."""
    if ref is None:
        return "-"

    def prefix(a, b):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return n / max(len(a), len(b), 1)

    same = sum(a == b for a, b in zip(seqs, ref))
    return f"{same}/{len(ref)} {np.mean([prefix(a, b) for a, b in zip(seqs, ref)]):.0%}"


def _measure(preset: str, d: str, mode: str, repeat: int, env: dict, threads: int | None = None) -> dict:
    why = compute_unavailable(mode.split("/")[0]) if mode in OURS else None
    if why:
        return {"status": f"unavailable: {why}"}
    argv = ["--worker", mode, "--preset", preset, "--dir", d, "--repeat", str(repeat)]
    argv += [] if threads is None else ["--threads", str(threads)]
    try:
        return {"status": "ok", **run_worker("bench.generate", argv, env)}
    except WorkerError as e:
        return {"status": f"unavailable: worker failed: {str(e).splitlines()[0][:120]}", "error": str(e)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=None, help="default: the preset's target length")
    ap.add_argument("--min-length", type=int, default=0)
    ap.add_argument("--no-repeat-ngram", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer-threads", default="",
                    help="comma-separated thread counts to time HF and CTranslate2 at (default: all cores, and 1)")
    ap.add_argument("--worker", choices=OURS + (CONTROL,) + PEERS)
    ap.add_argument("--dir")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.worker:
        if args.worker in OURS + (CONTROL,):
            result = worker_jax(args.dir, args.worker, args.repeat)
        elif args.worker == "hf/fp32":
            result = worker_hf(args.dir, args.threads, args.repeat)
        else:
            result = worker_ct2(args.dir, args.worker.split("/")[1].replace("fp32", "float32"), args.threads,
                                args.repeat)
        reply(result)
        return

    p = PRESETS[args.preset]
    env = worker_env()
    rec = cpu(env)
    threads = [int(t) for t in args.peer_threads.split(",") if t] or sorted({os.cpu_count(), 1}, reverse=True)
    with tempfile.TemporaryDirectory() as d:
        setup = prepare(args.preset, d, dict(num_beams=args.beams, max_length=args.max_length or p["target"],
                                             min_length=args.min_length, length_penalty=2.0,
                                             no_repeat_ngram_size=args.no_repeat_ngram, early_stopping=True))
        runs = [(m, None, _measure(args.preset, d, m, args.repeat, env)) for m in OURS + (CONTROL,)]
        runs += [(m, n, _measure(args.preset, d, m, args.repeat, env, n)) for m in PEERS for n in threads]
    ok = [(m, n, r) for m, n, r in runs if r["status"] == "ok"]
    ref = {m: next((r["sequences"] for m2, _, r in ok if m2 == m), None) for m in ("hf/fp32", "ct2/int8", "fake/fp32")}
    rows = []
    for m, n, r in runs:
        row = {"impl": m, "threads": n or "xla", "status": r["status"].split(":")[0]}
        if r["status"] == "ok":
            tokens = sum(len(s) for s in r["sequences"])
            row.update({"s/batch": r["s"], "gen tokens": tokens, "tokens/s": tokens / r["s"],
                        "peak RSS MiB": r["peak_rss_mib"], "= hf": agreement(r["sequences"], ref["hf/fp32"]),
                        "= ct2/int8": agreement(r["sequences"], ref["ct2/int8"]),
                        "= fake/fp32": agreement(r["sequences"], ref["fake/fp32"])})
        rows.append(row)
    best = lambda m: min((r["s"] for m2, _, r in ok if m2 == m), default=None)
    speedup = speedups({m: best(m) for m in OURS}, {m: best(m) for m in PEERS})
    gen, scfg = setup["generation"], setup["student"]
    print(cpu_line(rec))
    print(f"preset {args.preset}: 2-2-8 student {scfg['encoder_layers']}-{scfg['decoder_layers']}, d_model "
          f"{scfg['d_model']}, vocab {scfg['vocab_size']}; batch {p['batch']}, source {p['source']}, beams "
          f"{gen['num_beams']}, max_length {gen['max_length']}")
    columns = ["impl", "threads", "status", "s/batch", "gen tokens", "tokens/s", "peak RSS MiB", "= hf",
               "= ct2/int8", "= fake/fp32"]
    print(format_table([{c: row.get(c, "-") for c in columns} for row in rows]))
    for m, n, r in runs:
        if r["status"] != "ok":
            print(f"  {m}{'' if n is None else f' ({n} thr)'}: {r['status']}")
    ct2_types = {m: r["compute_type"] for m, _, r in ok if "compute_type" in r}
    print("CTranslate2 compute types run: " + ", ".join(f"{m} -> {t}" for m, t in ct2_types.items()))
    compile_s = {m: r["compile_s"] for m, _, r in ok if "compile_s" in r}
    print("JAX compile + first run (not timed): " + ", ".join(f"{m} {s:.1f} s" for m, s in compile_s.items())
          + "; CTranslate2 conversion: " + ", ".join(f"{q} {s:.1f} s" for q, s in setup["convert_s"].items()))
    print("speed-up (peer's best s/batch / ours): " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    floor = next((r["matmul_floor"] for m, _, r in ok if "matmul_floor" in r), None)
    if floor:
        print(f"fp32 matmul floor: encoder {floor['encoder_s']:.2f} s + {floor['steps']} steps x "
              f"{floor['products_ms_per_step']:.1f} ms (the step's weight products alone, "
              f"{floor['weight_mib_per_step']:.0f} MiB of weights) = {floor['floor_s']:.2f} s per batch")
    print("wrote", write_json(f"generate_{args.preset}", {
        "cpu": rec, "speedup": speedup, "preset": args.preset, "quant": "-".join(map(str, QUANT)),
        "batch": p["batch"], "source": p["source"], "generation": gen, "student": scfg, "rows": rows,
        "compile_s": compile_s, "ct2_convert_s": setup["convert_s"], "matmul_floor": floor,
        "workers": [{"mode": m, "threads": n, **r} for m, n, r in runs]}))


if __name__ == "__main__":
    main()
