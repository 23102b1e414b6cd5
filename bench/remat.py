"""Rematerialization: the distill train step's compiled memory and step time per `train.remat`.

    python -m bench.remat [--preset base] [--batch 32] [--steps 3] [--time-batch N] [--no-time]

The step is the DQ distill step of `bench.train_step` (frozen teacher forward, 2-2-8 student
forward and backward with the full DQ-BART loss, one AdamW update; fake/fp32, dropout 0.1) at
the preset's shapes with the batch overridden by `--batch` (base: teacher 6-6, student 6-3,
32 x (256 + 64)). Only the student is rematerialized (`Seq2SeqLM(..., remat=...)`), as the
distill stage does; the teacher runs forward only.

1. Memory, for `none`, `full` and `dots`: the step is AOT-compiled from abstract shapes
   (`jax.eval_shape` + `ShapeDtypeStruct`; nothing allocated) and XLA's `memory_analysis()`
   gives temporary, argument and output bytes. The acceptance check: `full`'s temporaries are
   at most 50% of `none`'s.
2. Step time, for each mode: real (random) weights, median of `--steps` steps after one warm-up.
   Timed at `--batch` when `none`'s compiled argument + temporary bytes fit in 80% of the
   available memory and its warm-up step takes at most 60 s; otherwise at `--time-batch`
   (default 8) for every mode, and the output says so.

Every compile and every timing runs in its own subprocess (`bench.common.run_worker`), so each
peak RSS is its own. On a shared 2-core machine the step times are noisy; the memory numbers
are not (they are the compiler's).

Prints the CPU line and a table; writes bench/results/remat.json with top-level `cpu`,
`speedup` ("<mode> vs none": none's step time / the mode's; below 1 = slower) and
`temp_ratio` ("<mode> vs none": the mode's compiled temporaries / none's).
"""

from __future__ import annotations

import argparse
import time

from bench.common import PRESETS, WorkerError, cpu, cpu_line, reply, run_worker, speedups, worker_env, write_json
from dq_jax.utils.table import format_table

MODES = ("none", "full", "dots")
QUANT = (2, 2, 8)
GIB = 1024**3
MAX_STEP_S = 60.0


def _setup(preset_name: str, batch: int, mode: str):
    """(step fn, mesh, state shardings, teacher shardings, abstract state, abstract teacher params,
    abstract batch, student cfg, teacher cfg, tx) at these shapes; nothing allocated."""
    import jax
    import jax.numpy as jnp

    from dq_jax.model import modeling
    from dq_jax.model.modeling import Seq2SeqLM
    from dq_jax.parallel import sharding
    from dq_jax.quant.config import QuantConfig
    from dq_jax.training import distill, train_step

    p = PRESETS[preset_name]
    tcfg = p["model"]
    enc, dec = p["student_layers"]
    scfg = tcfg.replace(encoder_layers=enc, decoder_layers=dec)
    t_abs, s_abs = modeling.abstract_params(tcfg), modeling.abstract_params(scfg)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    dcfg = distill.DistillConfig(
        encoder_map=distill.layer_map(tcfg.encoder_layers, enc), decoder_map=distill.layer_map(tcfg.decoder_layers, dec)
    )
    tx = train_step.make_optimizer(train_step.OptimConfig(learning_rate=1e-5, total_steps=1000), s_abs)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state_abs = jax.eval_shape(
        lambda q, r: train_step.TrainState(jnp.int32(0), q, tx.init(q), r, jnp.int32(-1)), s_abs, rng
    )
    st_sh = sharding.state_shardings(state_abs, s_abs, mesh)
    t_sh = sharding.param_shardings(t_abs, mesh)
    lengths = dict(
        input_ids=p["source"],
        attention_mask=p["source"],
        decoder_input_ids=p["target"],
        decoder_attention_mask=p["target"],
        labels=p["target"],
    )
    batch_abs = {k: jax.ShapeDtypeStruct((1, batch, n), jnp.int32) for k, n in lengths.items()}
    student = Seq2SeqLM(scfg, QuantConfig(*QUANT), remat=mode)
    fn = train_step.make_train_step(student, Seq2SeqLM(tcfg), dcfg, tx)
    step = train_step.compile_step(fn, mesh, st_sh, t_sh)
    return step, mesh, st_sh, t_sh, state_abs, t_abs, batch_abs, scfg, tcfg, tx


def worker_compile(preset: str, batch: int, mode: str) -> dict:
    step, *_, state_abs, t_abs, batch_abs, _scfg, _tcfg, _tx = _setup(preset, batch, mode)
    t0 = time.perf_counter()
    compiled = step.lower(state_abs, t_abs, batch_abs).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    return dict(
        compile_s=compile_s,
        temp_bytes=int(m.temp_size_in_bytes),
        argument_bytes=int(m.argument_size_in_bytes),
        output_bytes=int(m.output_size_in_bytes),
        alias_bytes=int(m.alias_size_in_bytes),
        flops=float(cost.get("flops", 0.0)),
    )


def worker_time(preset: str, batch: int, mode: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench.train_step import _batch
    from dq_jax.model.modeling import Seq2SeqLM
    from dq_jax.training import distill, train_step

    step, mesh, _st_sh, t_sh, _state_abs, _t_abs, _batch_abs, scfg, tcfg, tx = _setup(preset, batch, mode)
    ids = jnp.zeros((1, 2), jnp.int32)
    t_params = jax.device_get(jax.jit(Seq2SeqLM(tcfg).init)(jax.random.key(0), ids, decoder_input_ids=ids)["params"])
    _, s_params = distill.init_student(tcfg, t_params, scfg.encoder_layers, scfg.decoder_layers)
    state, _ = train_step.init_state(s_params, tx, jax.random.key(0), mesh)
    teacher = jax.device_put(t_params, t_sh)
    p = dict(PRESETS[preset], batch=batch)
    dev_batch = train_step.shard_batch(
        {k: v[None].astype(np.int32) for k, v in _batch(p, tcfg.vocab_size).items()}, mesh
    )
    compiled = step.lower(state, teacher, dev_batch).compile()
    t = time.perf_counter()
    state, m = compiled(state, teacher, dev_batch)
    loss0 = float(m["loss"])  # blocks
    first_s = time.perf_counter() - t
    if first_s > MAX_STEP_S:
        return dict(too_slow=True, first_step_s=first_s, loss=loss0)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, teacher, dev_batch)
        float(m["loss"])
        times.append(time.perf_counter() - t)
    return dict(too_slow=False, step_s=sorted(times)[len(times) // 2], times_s=times, first_step_s=first_s, loss=loss0)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(env, *argv) -> dict:
    return run_worker("bench.remat", [str(a) for a in argv], env)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="base", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--time-batch", type=int, default=8, help="the batch to time at when --batch does not fit or is too slow"
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-time", action="store_true", help="compiled memory only")
    ap.add_argument("--worker", choices=["compile", "time"])
    ap.add_argument("--mode", choices=MODES)
    args = ap.parse_args()
    if args.worker:
        r = (
            worker_compile(args.preset, args.batch, args.mode)
            if args.worker == "compile"
            else worker_time(args.preset, args.batch, args.mode, args.steps)
        )
        reply(r)
        return

    env = worker_env()
    rec = cpu(env)
    p = PRESETS[args.preset]
    mem = {
        m: _worker(env, "--worker", "compile", "--preset", args.preset, "--batch", args.batch, "--mode", m)
        for m in MODES
    }
    notes = []
    timing: dict[str, dict] = {}
    time_batch = args.batch
    if not args.no_time:
        need = mem["none"]["argument_bytes"] + mem["none"]["temp_bytes"]
        avail = mem_available()
        if need > 0.8 * avail:
            time_batch = args.time_batch
            notes.append(
                f"timed at batch {time_batch}: none's step needs {need / GIB:.1f} GiB at batch {args.batch}, "
                f"{avail / GIB:.1f} GiB available"
            )
        for _attempt in range(2):
            timing = {}
            for m in MODES:
                try:
                    timing[m] = _worker(
                        env,
                        "--worker",
                        "time",
                        "--preset",
                        args.preset,
                        "--batch",
                        time_batch,
                        "--mode",
                        m,
                        "--steps",
                        args.steps,
                    )
                except WorkerError as e:
                    timing[m] = {"error": str(e).splitlines()[0][:200]}
                if timing[m].get("too_slow") and time_batch != args.time_batch:
                    notes.append(
                        f"timed at batch {args.time_batch}: a step at batch {time_batch} took "
                        f"{timing[m]['first_step_s']:.0f} s (> {MAX_STEP_S:.0f} s)"
                    )
                    time_batch = args.time_batch
                    break
            else:
                break
    ratio = {f"{m} vs none": mem[m]["temp_bytes"] / mem["none"]["temp_bytes"] for m in MODES if m != "none"}
    step_s = {m: timing.get(m, {}).get("step_s") for m in MODES}
    speedup = speedups({m: step_s[m] for m in MODES if m != "none"}, {"none": step_s["none"]})
    holds = ratio["full vs none"] <= 0.5
    rows = []
    for m in MODES:
        r, t = mem[m], timing.get(m, {})
        rows.append(
            {
                "remat": m,
                "temp GiB": r["temp_bytes"] / GIB,
                "temp / none": r["temp_bytes"] / mem["none"]["temp_bytes"],
                "args GiB": r["argument_bytes"] / GIB,
                "out GiB": r["output_bytes"] / GIB,
                "GFLOP": r["flops"] / 1e9,
                "compile s": r["compile_s"],
                "step s": t.get("step_s", t.get("error", "-")),
                "step / none": (step_s[m] / step_s["none"] if step_s[m] and step_s["none"] else "-"),
                "peak RSS MiB": t.get("peak_rss_mib", "-"),
                "first loss": t.get("loss", "-"),
            }
        )
    print(cpu_line(rec))
    print(
        f"[{args.preset}] distill step, batch {args.batch} x ({p['source']} + {p['target']}), teacher "
        f"{p['model'].encoder_layers}-{p['model'].decoder_layers}, student {p['student_layers']}, quant "
        f"{'-'.join(map(str, QUANT))}, fake/fp32; memory from the AOT compile at batch {args.batch}"
        + ("" if args.no_time else f", step time at batch {time_batch} (median of {args.steps})")
    )
    print(format_table(rows))
    for n in notes:
        print("note:", n)
    print(
        f"acceptance (full's temporaries <= 50% of none's at batch {args.batch}): "
        f"{'holds' if holds else 'does NOT hold'} ({100 * ratio['full vs none']:.1f}%)"
    )
    print("step time (none's / the mode's): " + (", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()) or "-"))
    path = write_json(
        "remat",
        {
            "cpu": rec,
            "speedup": speedup,
            "temp_ratio": ratio,
            "preset": args.preset,
            "batch": args.batch,
            "time_batch": None if args.no_time else time_batch,
            "quant": "-".join(map(str, QUANT)),
            "acceptance": {"full_temp_at_most_50pct_of_none": holds, "full_temp_ratio": ratio["full vs none"]},
            "notes": notes,
            "rows": rows,
            "compile": mem,
            "timing": timing,
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
