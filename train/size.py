"""Model size report without training (shapes only, through jax.eval_shape).

    python -m train.size --config configs/xsum.py:wbits=2,ebits=2,abits=8,layers=6-6

Prints, for the fp32 teacher and the student, each component's elements, bits and MiB by the
paper's convention (METHOD.md, "Model size") and by what the packed file really stores
(codes at their container width, scales, an fp32 LM head when the head is not quantized),
and both compression ratios.

In-process: `main(["train.size", "--config", ...])`, the program name first as absl expects
(`sys.argv`).
"""

import os
import sys

from train.flags import parse_flags


def report(spec) -> dict:
    from dq_jax import size
    from dq_jax.export import packed
    from dq_jax.inference.evaluation import generation_config
    from dq_jax.model.modeling import abstract_params, abstract_trainable
    from dq_jax.quant.config import QuantConfig, split_elastic
    from dq_jax.stages import derive, teacher_shape

    t_cfg = teacher_shape(spec).cfg  # the one rule for a teacher's shapes without its weights
    s_cfg = derive(spec, t_cfg).student  # the student the run would build, explicit layer maps included
    s_trainable = abstract_trainable(s_cfg, spec.quant)  # + TBT's activation step sizes
    t_abs, s_abs = abstract_params(t_cfg), split_elastic(s_trainable)[0]
    tokenizer_dir = spec.teacher.path if os.path.isdir(spec.teacher.path or "") else None
    rows, totals = [], {}
    for who, cfg, shapes, trainable, q in (
        ("teacher", t_cfg, t_abs, t_abs, QuantConfig()),
        ("student", s_cfg, s_abs, s_trainable, spec.quant),
    ):
        paper = {c.name: c for c in size.paper_components(shapes, q.weight_bits, q.embed_bits)}
        stored = {r["component"]: r for r in packed.components(cfg, trainable, q)}
        for name in list(paper) + [n for n in stored if n not in paper]:
            p, k = paper.get(name), stored.get(name)
            rows.append(
                {
                    "model": who,
                    "component": name,
                    "elements": (p.elements if p else k["elements"]),
                    "paper bits": p.bits if p else "-",
                    "paper MiB": round(p.mib, 3) if p else 0.0,
                    "packed bits": k["bits"] if k else "-",
                    "packed MiB": round(k["mib"], 3) if k else 0.0,
                }
            )
        totals[f"{who}_paper_mib"] = size.paper_size_mib(shapes, q.weight_bits, q.embed_bits)
        totals[f"{who}_packed_mib"] = (
            packed.file_bytes(
                cfg,
                trainable,
                q,
                packed.Extras(tokenizer_dir, generation_config(cfg, spec.eval).to_hf_dict(), spec.precision),
            )
            / size.MIB
        )
    totals["paper_ratio"] = totals["teacher_paper_mib"] / totals["student_paper_mib"]
    totals["packed_ratio"] = totals["teacher_packed_mib"] / totals["student_packed_mib"]
    return {"rows": rows, "totals": totals}


def main(argv: list[str]) -> int | None:
    """Prints the report; `argv` is the whole command line, program name first (`sys.argv`)."""
    args = parse_flags(argv, lambda fv: None, __doc__, config=True)
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)
    from train.settings import spec_from_config

    try:
        out = report(spec_from_config(args.config))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from dq_jax.utils.table import format_table

    print(format_table(out["rows"], fmt=lambda _k, v: str(v)))
    t = out["totals"]
    print(
        f"\npaper convention : teacher {t['teacher_paper_mib']:.1f} MiB, student {t['student_paper_mib']:.1f} MiB, "
        f"ratio {t['paper_ratio']:.1f}x"
    )
    print(
        f"packed file      : teacher {t['teacher_packed_mib']:.1f} MiB, student {t['student_packed_mib']:.1f} MiB, "
        f"ratio {t['packed_ratio']:.1f}x (scales, fp32 tensors and any fp32 LM head included)"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
