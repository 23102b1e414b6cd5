"""DQ train step throughput: dq-jax vs the same step in PyTorch on HF BART, in one run.

    python -m bench.train_step [--preset tiny|base|all] [--steps 5]

One step = frozen fp32 teacher forward (6-6 at `base`), fake-quantized 2-2-8 student (6-3)
forward and backward with the full DQ-BART loss (task CE + logits + attention + hidden-state
MSE), one AdamW update. The peer is `transformers.BartForConditionalGeneration` patched into
the reference DQ-BART student (`tests.torch_reference`), same weights, same batch, same
loss. Each framework runs in its own subprocess (so peak RSS is its own) with the same
allocator; a large fp32 matmul measured in the same run gives the machine's peak FLOP/s, and
the step's FLOPs come from XLA's cost analysis of the compiled JAX step (the same work for
both). Prints a table and writes bench/results/train_step.json.

tcmalloc matters on CPU (glibc malloc costs both frameworks about a quarter of their speed):
when `libtcmalloc_minimal.so.4` is installed the workers are started with it preloaded.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import PRESETS, print_table, write_json

QUANT = (2, 2, 8)


def _tcmalloc() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4") + glob.glob("/usr/lib/libtcmalloc_minimal.so.4"))
    return found[0] if found else None


def _batch(preset: dict, vocab: int):
    import numpy as np
    rng = np.random.RandomState(0)
    b, s, t = preset["batch"], preset["source"], preset["target"]
    ids = rng.randint(3, vocab, (b, s)).astype(np.int64)
    labels = rng.randint(3, vocab, (b, t)).astype(np.int64)
    dec = np.concatenate([np.full((b, 1), 2), labels[:, :-1]], 1)
    ones_s, ones_t = np.ones((b, s), np.int64), np.ones((b, t), np.int64)
    return dict(input_ids=ids, attention_mask=ones_s, decoder_input_ids=dec, decoder_attention_mask=ones_t,
                labels=labels)


def prepare(preset_name: str, out: str) -> None:
    """Random teacher (HF format) and its initialized student, shared by both workers."""
    import numpy as np
    import torch
    import transformers
    from dq_jax import distill, hf
    preset = PRESETS[preset_name]
    cfg = preset["model"]
    torch.manual_seed(0)
    transformers.BartForConditionalGeneration(transformers.BartConfig(**cfg.to_hf_dict())).save_pretrained(
        f"{out}/teacher")
    tcfg, tparams = hf.load_pretrained(f"{out}/teacher")
    scfg, sparams = distill.init_student(tcfg, tparams, *preset["student_layers"])
    hf.save_pretrained(scfg, sparams, f"{out}/student")
    np.savez(f"{out}/batch.npz", **_batch(preset, cfg.vocab_size))


def matmul_peak(n: int = 2048) -> float:
    """FLOP/s of a large fp32 matmul in JAX: the machine's practical peak."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        f(a).block_until_ready()
    return 5 * 2 * n ** 3 / (time.perf_counter() - t)


def worker_jax(preset_name: str, d: str, steps: int) -> dict:
    import jax
    import numpy as np
    from dq_jax import distill, hf, sharding, train_step
    from dq_jax.modeling import Seq2SeqLM
    from dq_jax.quant_config import QuantConfig
    tcfg, tparams = hf.load_pretrained(f"{d}/teacher")
    scfg, sparams = hf.load_pretrained(f"{d}/student")
    batch = {k: v[None].astype(np.int32) for k, v in np.load(f"{d}/batch.npz").items()}
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    dcfg = distill.DistillConfig(encoder_map=distill.layer_map(tcfg.encoder_layers, scfg.encoder_layers),
                                 decoder_map=distill.layer_map(tcfg.decoder_layers, scfg.decoder_layers))
    tx = train_step.make_optimizer(train_step.OptimConfig(learning_rate=1e-5, total_steps=1000), sparams)
    state, st_sh = train_step.init_state(sparams, tx, jax.random.key(0), mesh)
    t_sh = sharding.param_shardings(tparams, mesh)
    teacher = jax.device_put(tparams, t_sh)
    fn = train_step.make_train_step(Seq2SeqLM(scfg, QuantConfig(*QUANT)), Seq2SeqLM(tcfg), dcfg, tx)
    step = train_step.compile_step(fn, mesh, st_sh, t_sh)
    dev_batch = train_step.shard_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, teacher, dev_batch).compile()
    compile_s = time.perf_counter() - t0
    flops = float((compiled.cost_analysis() or {}).get("flops", 0.0))
    state, m = compiled(state, teacher, dev_batch)
    jax.block_until_ready(m)
    times, losses = [], []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, teacher, dev_batch)
        losses.append(float(m["loss"]))
        times.append(time.perf_counter() - t)
    return dict(step_s=sorted(times)[len(times) // 2], flops=flops, compile_s=compile_s, loss=losses[0],
                peak=matmul_peak())


def _torch_loss(s, t, batch, enc_map, dec_map):
    """The DQ-BART reference loss (METHOD.md), unmasked means, weights 1 and 1."""
    import torch.nn.functional as F
    ce = F.cross_entropy(s.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    loss = ce + F.mse_loss(s.logits, t.logits)
    for sa, ta, m in ((s.encoder_attentions, t.encoder_attentions, enc_map),
                      (s.decoder_attentions, t.decoder_attentions, dec_map),
                      (s.cross_attentions, t.cross_attentions, dec_map)):
        loss = loss + sum(F.mse_loss(sa[i], ta[j]) for i, j in enumerate(m))
    for sh, th, m in ((s.encoder_hidden_states, t.encoder_hidden_states, enc_map),
                      (s.decoder_hidden_states, t.decoder_hidden_states, dec_map)):
        loss = loss + sum(F.mse_loss(sh[j], th[0 if j == 0 else m[j - 1] + 1]) for j in range(len(sh)))
    enc_s, enc_t = s.encoder_last_hidden_state, t.encoder_last_hidden_state
    return loss + sum(F.mse_loss(enc_s[b], enc_t[b]) for b in range(enc_s.shape[0]))


def worker_torch(preset_name: str, d: str, steps: int) -> dict:
    import numpy as np
    import torch
    import transformers
    from dq_jax import distill
    from tests.torch_reference import quantize_model
    torch.set_num_threads(os.cpu_count())
    teacher = transformers.BartForConditionalGeneration.from_pretrained(f"{d}/teacher", attn_implementation="eager").eval()
    student = transformers.BartForConditionalGeneration.from_pretrained(f"{d}/student", attn_implementation="eager")
    quantize_model(student, *QUANT)
    student.train()
    enc_map = distill.layer_map(teacher.config.encoder_layers, student.config.encoder_layers)
    dec_map = distill.layer_map(teacher.config.decoder_layers, student.config.decoder_layers)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5, eps=1e-6,
                            weight_decay=0.0)
    batch = {k: torch.tensor(v) for k, v in np.load(f"{d}/batch.npz").items()}
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}

    def step():
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


def _run_worker(kind: str, preset: str, d: str, steps: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.train_step", "--worker", kind, "--preset", preset,
                          "--dir", d, "--steps", str(steps)], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="all", choices=sorted(PRESETS) + ["all"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--worker", choices=["jax", "torch"])
    ap.add_argument("--dir")
    args = ap.parse_args()
    if args.worker:
        import resource
        fn = worker_jax if args.worker == "jax" else worker_torch
        result = fn(args.preset, args.dir, args.steps)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    env = dict(os.environ)
    lib = _tcmalloc()
    if lib:
        env["LD_PRELOAD"] = lib
    rows = []
    for name in (sorted(PRESETS) if args.preset == "all" else [args.preset]):
        p = PRESETS[name]
        tokens = p["batch"] * (p["source"] + p["target"])
        with tempfile.TemporaryDirectory() as d:
            prepare(name, d)
            j = _run_worker("jax", name, d, args.steps, env)
            t = _run_worker("torch", name, d, args.steps, env)
        for fw, r in (("dq-jax", j), ("pytorch", t)):
            rows.append({"preset": name, "framework": fw, "step ms": r["step_s"] * 1e3,
                         "tokens/s": tokens / r["step_s"], "peak RSS MiB": r["peak_rss_mib"],
                         "FLOP/s % of matmul peak": 100 * j["flops"] / r["step_s"] / j["peak"],
                         "first loss": r["loss"]})
        rows[-2]["x pytorch"] = rows[-1]["step ms"] / rows[-2]["step ms"]
        rows[-1]["x pytorch"] = 1.0
        print(f"[{name}] compile {j['compile_s']:.1f}s, step GFLOPs {j['flops'] / 1e9:.1f}, "
              f"matmul peak {j['peak'] / 1e9:.1f} GFLOP/s, allocator {'tcmalloc' if lib else 'glibc'}")
    print_table(rows)
    print("wrote", write_json("train_step", {"quant": "-".join(map(str, QUANT)), "rows": rows,
                                            "allocator": "tcmalloc" if lib else "glibc"}))


if __name__ == "__main__":
    main()
