"""DQ train step throughput: dq-jax in each compute mode vs the same step in PyTorch on HF BART.

    python -m bench.train_step [--preset tiny|base|all] [--steps 5]

One step = frozen teacher forward (6-6 at `base`), 2-2-8 student (6-3) forward and backward with
the full DQ-BART loss (task CE + logits + attention + hidden-state MSE), one AdamW update.

Ours, one row per mode `<compute>/<precision>`:
- `fake/fp32`: dequantized weights and activations, fp32 matmuls (the reference path);
- `codes/fp32`: `QuantConfig(compute="codes")`, integer codes multiplied exactly;
- `codes/bf16`: the same with student and teacher `Seq2SeqLM(..., dtype=jnp.bfloat16)` (fp32
  master params).
A mode this checkout cannot run (no `QuantConfig.compute` field yet, or its worker fails) is
listed as unavailable with the reason, not skipped.

Peers: `transformers.BartForConditionalGeneration` patched into the reference DQ-BART student
(`tests.torch_reference.quantize_model`), same weights, batch and loss, in fp32 (`torch/fp32`)
and under `torch.autocast("cpu", dtype=torch.bfloat16)` (`torch/bf16`). Each peer is timed at
every `--torch-threads` count (default: all cores, and 1) and compared at its best: PyTorch's
OpenMP threads wait at barriers, and when another process holds a core its elementwise ops
slow down tens of times (on 2 shared cores the 2-thread step measured 3x to 20x slower than the
1-thread one).

Every row runs in its own subprocess (so peak RSS is its own) with the same allocator
(tcmalloc preloaded when installed, see `bench.common`). Another worker measures three matmul
peaks in the same run, before and after the rows (the better of the two counts): fp32
`[n,n] @ [n,n]`, bf16 with fp32 accumulation (`preferred_element_type=float32`) and int8 x int8
-> int32 (`lax.dot_general`, `preferred_element_type=int32`). The step's work is XLA's FLOP count
of the compiled `fake/fp32` step (the same model arithmetic for every row), and each row gives
its achieved rate as a percentage of each peak. On a loaded machine the peaks and the rows are
measured at different moments of the load, so a row can exceed 100%.

Prints the CPU line and a table per preset and writes bench/results/train_step_<preset>.json
with top-level `cpu` and `speedup` ("<our mode> vs <peer>": the peer's best step time / ours).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench.common import (
    PRESETS,
    WorkerError,
    compute_unavailable,
    cpu,
    cpu_line,
    quant_config,
    reply,
    run_worker,
    speedups,
    timeit,
    worker_env,
    write_json,
)
from bench.train_step_torch import worker_torch
from dq_jax.utils.table import format_table

QUANT = (2, 2, 8)
OURS = ("fake/fp32", "codes/fp32", "codes/bf16")
PEERS = ("torch/fp32", "torch/bf16")
PEAKS = ("fp32", "bf16", "int8")


def _batch(preset: dict, vocab: int):
    import numpy as np

    rng = np.random.RandomState(0)
    b, s, t = preset["batch"], preset["source"], preset["target"]
    ids = rng.randint(3, vocab, (b, s)).astype(np.int64)
    labels = rng.randint(3, vocab, (b, t)).astype(np.int64)
    dec = np.concatenate([np.full((b, 1), 2), labels[:, :-1]], 1)
    ones_s, ones_t = np.ones((b, s), np.int64), np.ones((b, t), np.int64)
    return dict(
        input_ids=ids, attention_mask=ones_s, decoder_input_ids=dec, decoder_attention_mask=ones_t, labels=labels
    )


def prepare(preset_name: str, out: str) -> None:
    """Random teacher (HF format) and its initialized student, shared by all workers."""
    import numpy as np
    import torch
    import transformers

    from dq_jax.model import hf
    from dq_jax.training import distill

    preset = PRESETS[preset_name]
    cfg = preset["model"]
    torch.manual_seed(0)
    transformers.BartForConditionalGeneration(transformers.BartConfig(**cfg.to_hf_dict())).save_pretrained(
        f"{out}/teacher"
    )
    tcfg, tparams = hf.load_pretrained(f"{out}/teacher")
    scfg, sparams = distill.init_student(tcfg, tparams, *preset["student_layers"])
    hf.save_pretrained(scfg, sparams, f"{out}/student")
    np.savez(f"{out}/batch.npz", **_batch(preset, cfg.vocab_size))


def matmul_peaks(n: int = 2048, repeat: int = 5) -> dict[str, float]:
    """Operations/s of a large `[n,n] @ [n,n]` in JAX per operand type: the machine's practical peaks.
    fp32; bf16 operands accumulated in fp32; int8 operands accumulated in int32."""
    import jax
    import jax.numpy as jnp

    dims = (((1,), (0,)), ((), ()))
    k1, k2 = jax.random.split(jax.random.key(0))
    out = {}
    for name, dtype, acc in (
        ("fp32", jnp.float32, jnp.float32),
        ("bf16", jnp.bfloat16, jnp.float32),
        ("int8", jnp.int8, jnp.int32),
    ):
        if name == "int8":
            a, b = (jax.random.randint(k, (n, n), -127, 128, jnp.int8) for k in (k1, k2))
        else:
            a, b = (jax.random.normal(k, (n, n), dtype) for k in (k1, k2))
        f = jax.jit(lambda x, y, acc=acc: jax.lax.dot_general(x, y, dims, preferred_element_type=acc))
        out[name] = 2 * n**3 / timeit(lambda f=f, a=a, b=b: f(a, b).block_until_ready(), warmup=1, repeat=repeat)
    return out


def worker_jax(d: str, steps: int, mode: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dq_jax.model import hf
    from dq_jax.model.modeling import Seq2SeqLM
    from dq_jax.parallel import sharding
    from dq_jax.training import distill, train_step

    compute, precision = mode.split("/")
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    tcfg, tparams = hf.load_pretrained(f"{d}/teacher")
    scfg, sparams = hf.load_pretrained(f"{d}/student")
    batch = {k: v[None].astype(np.int32) for k, v in np.load(f"{d}/batch.npz").items()}
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    dcfg = distill.DistillConfig(
        encoder_map=distill.layer_map(tcfg.encoder_layers, scfg.encoder_layers),
        decoder_map=distill.layer_map(tcfg.decoder_layers, scfg.decoder_layers),
    )
    tx = train_step.make_optimizer(train_step.OptimConfig(learning_rate=1e-5, total_steps=1000), sparams)
    state, st_sh = train_step.init_state(sparams, tx, jax.random.key(0), mesh)
    t_sh = sharding.param_shardings(tparams, mesh)
    teacher = jax.device_put(tparams, t_sh)
    student = Seq2SeqLM(scfg, quant_config(QUANT, compute), dtype=dtype)
    fn = train_step.make_train_step(student, Seq2SeqLM(tcfg, dtype=dtype), dcfg, tx)
    step = train_step.compile_step(fn, mesh, st_sh, t_sh)
    dev_batch = train_step.shard_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, teacher, dev_batch).compile()
    compile_s = time.perf_counter() - t0
    flops = float((compiled.cost_analysis() or {}).get("flops", 0.0))
    state, m = compiled(state, teacher, dev_batch)
    loss0 = float(m["loss"])
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, teacher, dev_batch)
        float(m["loss"])  # blocks
        times.append(time.perf_counter() - t)
    return dict(step_s=sorted(times)[len(times) // 2], flops=flops, compile_s=compile_s, loss=loss0)


def _measure(preset: str, d: str, steps: int, env: dict, mode: str, threads: int | None = None) -> dict:
    """One row's worker result, or {"status": "unavailable: <why>"}."""
    ours = threads is None
    why = compute_unavailable(mode.split("/")[0] if ours else "fake")
    if why:
        return {"status": f"unavailable: {why}"}
    argv = [
        "--worker",
        "jax" if ours else "torch",
        "--mode",
        mode,
        "--preset",
        preset,
        "--dir",
        d,
        "--steps",
        str(steps),
    ] + ([] if ours else ["--threads", str(threads)])
    try:
        r = run_worker("bench.train_step", argv, env)
    except WorkerError as e:
        return {"status": f"unavailable: worker failed: {str(e).splitlines()[0][:120]}", "error": str(e)}
    return {"status": "ok", **r}


def run_preset(name: str, steps: int, threads: list[int], env: dict, rec: dict) -> str:
    p = PRESETS[name]
    tokens = p["batch"] * (p["source"] + p["target"])
    with tempfile.TemporaryDirectory() as d:
        prepare(name, d)
        measure_peaks = lambda: run_worker(
            "bench.train_step", ["--worker", "peaks", "--preset", name, "--dir", d], env
        )["peaks"]
        before = measure_peaks()
        runs = [(m, None, _measure(name, d, steps, env, m)) for m in OURS]
        runs += [(m, n, _measure(name, d, steps, env, m, n)) for m in PEERS for n in threads]
        peaks = {k: max(v, before[k]) for k, v in measure_peaks().items()}  # a peak is the best seen
    ok = [(m, n, r) for m, n, r in runs if r["status"] == "ok"]
    flops = next(
        (r["flops"] for m, _, r in ok if m == "fake/fp32"), next((r["flops"] for *_, r in ok if r.get("flops")), 0.0)
    )
    rows = []
    for m, n, r in runs:
        row = {
            "side": "dq-jax" if n is None else "pytorch",
            "mode": m,
            "threads": n or "xla",
            "status": r["status"].split(":")[0],
        }
        if r["status"] == "ok":
            row.update(
                {"step ms": r["step_s"] * 1e3, "tokens/s": tokens / r["step_s"], "peak RSS MiB": r["peak_rss_mib"]}
            )
            row.update({f"% {k} peak": 100 * flops / r["step_s"] / peaks[k] for k in PEAKS})
            row["first loss"] = r["loss"]
        rows.append(row)
    best = lambda m: min((r["step_s"] for m2, _, r in ok if m2 == m), default=None)
    speedup = speedups({m: best(m) for m in OURS}, {m: best(m) for m in PEERS})
    columns = (
        ["side", "mode", "threads", "status", "step ms", "tokens/s", "peak RSS MiB"]
        + [f"% {k} peak" for k in PEAKS]
        + ["first loss"]
    )
    print(cpu_line(rec))
    print(
        f"[{name}] batch {p['batch']} x ({p['source']} + {p['target']}), student {p['student_layers']}, "
        f"quant {'-'.join(map(str, QUANT))}; step {flops / 1e9:.1f} GFLOP (XLA, fake/fp32); matmul peaks "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items())
        + " GOP/s"
    )
    print(format_table([{c: row.get(c, "-") for c in columns} for row in rows]))
    for m, n, r in runs:
        if r["status"] != "ok":
            print(f"  {m}{'' if n is None else f' ({n} thr)'}: {r['status']}")
    print("speed-up (peer's best step time / ours): " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    return write_json(
        f"train_step_{name}",
        {
            "cpu": rec,
            "speedup": speedup,
            "preset": name,
            "quant": "-".join(map(str, QUANT)),
            "tokens_per_step": tokens,
            "step_flops": flops,
            "matmul_peaks_ops_per_s": peaks,
            "rows": rows,
            "workers": [{"mode": m, "threads": n, **r} for m, n, r in runs],
        },
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="all", choices=sorted(PRESETS) + ["all"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--worker", choices=["jax", "torch", "peaks"])
    ap.add_argument("--mode", choices=OURS + PEERS)
    ap.add_argument("--dir")
    ap.add_argument("--threads", type=int, help="(torch worker) intra-op threads")
    ap.add_argument(
        "--torch-threads", default="", help="comma-separated PyTorch thread counts to time (default: all cores, and 1)"
    )
    args = ap.parse_args()
    if args.worker:
        if args.worker == "peaks":
            result = {"peaks": matmul_peaks()}
        else:
            result = (
                worker_jax(args.dir, args.steps, args.mode)
                if args.worker == "jax"
                else worker_torch(args.dir, args.steps, args.mode, args.threads, QUANT)
            )
        reply(result)
        return
    env = worker_env()
    rec = cpu(env)
    threads = [int(t) for t in args.torch_threads.split(",") if t] or sorted({os.cpu_count(), 1}, reverse=True)
    for name in sorted(PRESETS) if args.preset == "all" else [args.preset]:
        print("wrote", run_preset(name, args.steps, threads, env, rec))


if __name__ == "__main__":
    main()
