"""Cost of fake quantization: quantized forward vs the full-precision forward, same weights.

    python -m bench.quant [--preset tiny|base] [--repeat 5]

Prints a table (ms per forward, ratio to fp32) and writes bench/results/quant_<preset>.json.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import PRESETS, print_table, timeit, write_json
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.quant.config import QuantConfig

SETTINGS = [
    ("fp32", None),
    ("8-8-8", QuantConfig(8, 8, 8)),
    ("2-2-8", QuantConfig(2, 2, 8)),
    ("2-2-fp", QuantConfig(2, 2, None)),
    ("fp-fp-8", QuantConfig(None, None, 8)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="base", choices=sorted(PRESETS))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    p = PRESETS[args.preset]
    cfg = p["model"]
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(3, cfg.vocab_size, (p["batch"], p["source"])), jnp.int32)
    dids = jnp.asarray(rng.randint(3, cfg.vocab_size, (p["batch"], p["target"])), jnp.int32)
    params = jax.jit(Seq2SeqLM(cfg).init)(jax.random.key(0), ids[:, :4], decoder_input_ids=dids[:, :4])["params"]
    rows = []
    for name, q in SETTINGS:
        model = Seq2SeqLM(cfg, q)
        fwd = jax.jit(lambda prm, a, b, m=model: m.apply({"params": prm}, a, None, b).logits)
        secs = timeit(lambda fwd=fwd: fwd(params, ids, dids).block_until_ready(), repeat=args.repeat)
        rows.append({"setting": name, "ms/forward": secs * 1e3})
    base = rows[0]["ms/forward"]
    for r in rows:
        r["x fp32 time"] = r["ms/forward"] / base
    print(
        f"preset {args.preset}: batch {p['batch']}, source {p['source']}, target {p['target']}, "
        f"d_model {cfg.d_model}, layers {cfg.encoder_layers}-{cfg.decoder_layers}"
    )
    print_table(rows)
    print("wrote", write_json(f"quant_{args.preset}", {"preset": args.preset, "rows": rows}))


if __name__ == "__main__":
    main()
