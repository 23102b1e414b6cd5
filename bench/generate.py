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
The `fake/fp32` worker also times the matmul floor (see `generate_workers._matmul_floor`).
Prints the CPU line and a table and writes bench/results/generate_<preset>.json with top-level
`cpu` and `speedup` ("<our mode> vs <peer>": the peer's best seconds per batch / ours).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from bench.common import (
    PRESETS,
    WorkerError,
    compute_unavailable,
    cpu,
    cpu_line,
    reply,
    run_worker,
    speedups,
    worker_env,
    write_json,
)
from bench.generate_setup import QUANT, prepare
from bench.generate_workers import CONTROL, OURS, PEERS, worker_ct2, worker_hf, worker_jax
from dq_jax.utils.table import format_table


def agreement(seqs: list[list[int]], ref: list[list[int]] | None) -> str:
    """ "<identical>/<batch> <mean share of tokens before the first difference>" or "-"."""
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
    ap.add_argument(
        "--peer-threads",
        default="",
        help="comma-separated thread counts to time HF and CTranslate2 at (default: all cores, and 1)",
    )
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
            result = worker_ct2(
                args.dir, args.worker.split("/")[1].replace("fp32", "float32"), args.threads, args.repeat
            )
        reply(result)
        return

    p = PRESETS[args.preset]
    env = worker_env()
    rec = cpu(env)
    threads = [int(t) for t in args.peer_threads.split(",") if t] or sorted({os.cpu_count(), 1}, reverse=True)
    with tempfile.TemporaryDirectory() as d:
        setup = prepare(
            args.preset,
            d,
            dict(
                num_beams=args.beams,
                max_length=args.max_length or p["target"],
                min_length=args.min_length,
                length_penalty=2.0,
                no_repeat_ngram_size=args.no_repeat_ngram,
                early_stopping=True,
            ),
        )
        runs = [(m, None, _measure(args.preset, d, m, args.repeat, env)) for m in OURS + (CONTROL,)]
        runs += [(m, n, _measure(args.preset, d, m, args.repeat, env, n)) for m in PEERS for n in threads]
    ok = [(m, n, r) for m, n, r in runs if r["status"] == "ok"]
    ref = {m: next((r["sequences"] for m2, _, r in ok if m2 == m), None) for m in ("hf/fp32", "ct2/int8", "fake/fp32")}
    rows = []
    for m, n, r in runs:
        row = {"impl": m, "threads": n or "xla", "status": r["status"].split(":")[0]}
        if r["status"] == "ok":
            tokens = sum(len(s) for s in r["sequences"])
            row.update(
                {
                    "s/batch": r["s"],
                    "gen tokens": tokens,
                    "tokens/s": tokens / r["s"],
                    "peak RSS MiB": r["peak_rss_mib"],
                    "= hf": agreement(r["sequences"], ref["hf/fp32"]),
                    "= ct2/int8": agreement(r["sequences"], ref["ct2/int8"]),
                    "= fake/fp32": agreement(r["sequences"], ref["fake/fp32"]),
                }
            )
        rows.append(row)
    best = lambda m: min((r["s"] for m2, _, r in ok if m2 == m), default=None)
    speedup = speedups({m: best(m) for m in OURS}, {m: best(m) for m in PEERS})
    gen, scfg = setup["generation"], setup["student"]
    print(cpu_line(rec))
    print(
        f"preset {args.preset}: 2-2-8 student {scfg['encoder_layers']}-{scfg['decoder_layers']}, d_model "
        f"{scfg['d_model']}, vocab {scfg['vocab_size']}; batch {p['batch']}, source {p['source']}, beams "
        f"{gen['num_beams']}, max_length {gen['max_length']}"
    )
    columns = [
        "impl",
        "threads",
        "status",
        "s/batch",
        "gen tokens",
        "tokens/s",
        "peak RSS MiB",
        "= hf",
        "= ct2/int8",
        "= fake/fp32",
    ]
    print(format_table([{c: row.get(c, "-") for c in columns} for row in rows]))
    for m, n, r in runs:
        if r["status"] != "ok":
            print(f"  {m}{'' if n is None else f' ({n} thr)'}: {r['status']}")
    ct2_types = {m: r["compute_type"] for m, _, r in ok if "compute_type" in r}
    print("CTranslate2 compute types run: " + ", ".join(f"{m} -> {t}" for m, t in ct2_types.items()))
    compile_s = {m: r["compile_s"] for m, _, r in ok if "compile_s" in r}
    print(
        "JAX compile + first run (not timed): "
        + ", ".join(f"{m} {s:.1f} s" for m, s in compile_s.items())
        + "; CTranslate2 conversion: "
        + ", ".join(f"{q} {s:.1f} s" for q, s in setup["convert_s"].items())
    )
    print("speed-up (peer's best s/batch / ours): " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    floor = next((r["matmul_floor"] for m, _, r in ok if "matmul_floor" in r), None)
    if floor:
        print(
            f"fp32 matmul floor: encoder {floor['encoder_s']:.2f} s + {floor['steps']} steps x "
            f"{floor['products_ms_per_step']:.1f} ms (the step's weight products alone, "
            f"{floor['weight_mib_per_step']:.0f} MiB of weights) = {floor['floor_s']:.2f} s per batch"
        )
    print(
        "wrote",
        write_json(
            f"generate_{args.preset}",
            {
                "cpu": rec,
                "speedup": speedup,
                "preset": args.preset,
                "quant": "-".join(map(str, QUANT)),
                "batch": p["batch"],
                "source": p["source"],
                "generation": gen,
                "student": scfg,
                "rows": rows,
                "compile_s": compile_s,
                "ct2_convert_s": setup["convert_s"],
                "matmul_floor": floor,
                "workers": [{"mode": m, "threads": n, **r} for m, n, r in runs],
            },
        ),
    )


if __name__ == "__main__":
    main()
