"""Offline check of what the library does today: HF <-> Flax parity and quantized students.

    python -m train.check --workdir runs/check

Builds a small random BART with `transformers`, saves it, loads it through `dq_jax.model.hf`,
compares logits with PyTorch, then runs fake-quantized students (8-8-8, 2-2-8) from the same
weights and prints their logit drift and their size by the paper's convention at BART-base
shapes. Writes the table to WORKDIR/check.json.

In-process: `main(["train.check", "--workdir", ...])`, the program name first as absl expects
(`sys.argv`).
"""

import json
import os
import sys

import jax
import numpy as np
from absl import flags

from train.flags import parse_flags


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", "runs/check", "Where the check writes its model and check.json.", flag_values=fv)


def main(argv: list[str]) -> int | None:
    """Runs the check; `argv` is the whole command line, program name first (`sys.argv`)."""
    args = parse_flags(argv, _define, __doc__)
    import torch
    import transformers

    from dq_jax import size
    from dq_jax.model import hf, modeling
    from dq_jax.model.config import ModelConfig
    from dq_jax.quant.config import QuantConfig

    os.makedirs(args.workdir, exist_ok=True)
    torch.manual_seed(0)
    hf_cfg = transformers.BartConfig(
        vocab_size=512,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    teacher_dir = os.path.join(args.workdir, "teacher_hf")
    transformers.BartForConditionalGeneration(hf_cfg).eval().save_pretrained(teacher_dir)
    torch_model = transformers.BartForConditionalGeneration.from_pretrained(teacher_dir).eval()
    cfg, params = hf.load_pretrained(teacher_dir)

    rng = np.random.RandomState(0)
    ids, dids = rng.randint(3, 512, (4, 32)), rng.randint(3, 512, (4, 16))
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dids)).logits.numpy()

    rows = []
    base = ModelConfig()
    base_shapes = {
        L: modeling.abstract_params(base.replace(encoder_layers=L[0], decoder_layers=L[1])) for L in ((6, 6),)
    }
    teacher_mib = size.paper_size_mib(base_shapes[(6, 6)], None, None)
    for name, q in [("fp32", None), ("8-8-8", QuantConfig(8, 8, 8)), ("2-2-8", QuantConfig(2, 2, 8))]:
        logits = jax.jit(modeling.Seq2SeqLM(cfg, q).apply)({"params": params}, ids, None, dids).logits
        mib = size.paper_size_mib(base_shapes[(6, 6)], q and q.weight_bits, q and q.embed_bits)
        rows.append(
            {
                "model": name,
                "max |logits - torch fp32|": float(np.abs(np.asarray(logits) - ref).max()),
                "BART-base size MiB (paper)": round(mib, 1),
                "ratio": round(teacher_mib / mib, 1),
            }
        )
    header = list(rows[0])
    print(" | ".join(header))
    for r in rows:
        print(
            " | ".join(f"{r[h]:.3g}" if isinstance(r[h], float) and h.startswith("max") else str(r[h]) for h in header)
        )
    with open(os.path.join(args.workdir, "check.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
