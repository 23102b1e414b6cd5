"""Model size report without training (shapes only, through jax.eval_shape).

    python -m train.size --config configs/xsum.py:wbits=2,ebits=2,abits=8,layers=6-6

Prints, for the fp32 teacher and the student, each component's elements, bits and MiB by the
paper's convention (METHOD.md, "Model size") and by what the packed file really stores
(codes at their container width, scales, an fp32 LM head when the head is not quantized),
and both compression ratios.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':variant'.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])

def report(spec) -> dict:
    from dq_jax import distill, hf, planner, size
    from dq_jax.quant_config import QuantConfig, split_elastic
    t_cfg = planner.teacher_shape(spec).cfg  # the one rule for a teacher's shapes without its weights
    enc, dec = spec.student.layers
    distill.layer_map(t_cfg.encoder_layers, enc, side="encoder")
    distill.layer_map(t_cfg.decoder_layers, dec, side="decoder")
    s_cfg = t_cfg.replace(encoder_layers=enc, decoder_layers=dec)
    s_trainable = hf.abstract_trainable(s_cfg, spec.quant)  # + TBT's activation step sizes
    t_abs, s_abs = hf.abstract_params(t_cfg), split_elastic(s_trainable)[0]
    tok = size.tokenizer_bytes(spec.teacher.path if os.path.isdir(spec.teacher.path or "") else None)
    rows = []
    for who, shapes, trainable, q in (("teacher", t_abs, t_abs, QuantConfig()),
                                      ("student", s_abs, s_trainable, spec.quant)):
        paper = {c.name: c for c in size.paper_components(shapes, q.weight_bits, q.embed_bits)}
        packed = {r["component"]: r for r in size.packed_components(trainable, q)}
        for name in list(paper) + [n for n in packed if n not in paper]:
            p, k = paper.get(name), packed.get(name)
            rows.append({"model": who, "component": name, "elements": (p.elements if p else k["elements"]),
                         "paper bits": p.bits if p else "-", "paper MiB": round(p.mib, 3) if p else 0.0,
                         "packed bits": k["bits"] if k else "-", "packed MiB": round(k["mib"], 3) if k else 0.0})
    t_paper = size.paper_size_mib(t_abs, None, None)
    s_paper = size.paper_size_mib(s_abs, spec.quant.weight_bits, spec.quant.embed_bits)
    t_packed = size.packed_size_bytes(t_abs, QuantConfig(), tok) / size.MIB
    s_packed = size.packed_size_bytes(s_trainable, spec.quant, tok) / size.MIB
    totals = {"teacher_paper_mib": t_paper, "student_paper_mib": s_paper, "paper_ratio": t_paper / s_paper,
              "teacher_packed_mib": t_packed, "student_packed_mib": s_packed, "packed_ratio": t_packed / s_packed}
    return {"rows": rows, "totals": totals}


def main(argv):
    import logging
    logging.getLogger("absl").setLevel(logging.WARNING)
    from train.settings import spec_from_config
    try:
        out = report(spec_from_config(_CONFIG.value))
    except ValueError as e:
        sys.exit(f"error: {e}")
    from dq_jax.table import format_table
    print(format_table(out["rows"], fmt=lambda _k, v: str(v)))
    t = out["totals"]
    print(f"\npaper convention : teacher {t['teacher_paper_mib']:.1f} MiB, student {t['student_paper_mib']:.1f} MiB, "
          f"ratio {t['paper_ratio']:.1f}x")
    print(f"packed file      : teacher {t['teacher_packed_mib']:.1f} MiB, student {t['student_packed_mib']:.1f} MiB, "
          f"ratio {t['packed_ratio']:.1f}x (scales, fp32 tensors and any fp32 LM head included)")


if __name__ == "__main__":
    app.run(main)
