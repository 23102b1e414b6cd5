"""The paper's table in miniature, offline: DQ-BART's and TBT's findings on the demo task.

    python bench/reproduce.py [--workdir runs/reproduce] [--config configs/demo.py] [--set KEY=VALUE ...]

One teacher, then students distilled from it (a `train.sweep` with explicit points, so it
resumes like any sweep: rerun the same command after an interruption):
- quantization only (task loss, no teacher) at 8-8-8 and 2-2-8;
- DQ-BART at 8-8-8 and 2-2-8 at full depth, and 2-2-8 with a shallower and a 1-layer decoder;
- TBT at W2A8, W1A8, W2A2 and W1A1 (ternary/binary weights, elastic activations at 1-2 bits).
Writes the sweep's `sweep.md`, `sweep.csv` and `tradeoff.png` in the workdir, then checks the
paper's qualitative findings against the numbers and writes `findings.md` there and
`bench/results/reproduce.json`. The default (demo config) takes about 40 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import write_json  # noqa: E402

from train import sweep, sweep_report  # noqa: E402

BITS = ("quant.weight_bits", "quant.embed_bits", "quant.act_bits")


def _bits(w, e, a) -> dict:
    return dict(zip(BITS, (str(w), str(e), str(a))))


def points(enc: int, dec: int) -> list[sweep.Point]:
    """The table's rows for a teacher with `enc`-`dec` layers."""
    shallow = max(dec - 1, 1)
    full = f"{enc}-{dec}"
    return [
        sweep.Point("qonly_8-8-8", {**_bits(8, 8, 8), "distill.enabled": "False", "student.layers": full}),
        sweep.Point("qonly_2-2-8", {**_bits(2, 2, 8), "distill.enabled": "False", "student.layers": full}),
        sweep.Point("dq_8-8-8", {**_bits(8, 8, 8), "student.layers": full}),
        sweep.Point("dq_2-2-8", {**_bits(2, 2, 8), "student.layers": full}),
        sweep.Point(f"dq_2-2-8_{enc}-{shallow}", {**_bits(2, 2, 8), "student.layers": f"{enc}-{shallow}"}),
        sweep.Point(f"dq_2-2-8_{enc}-1", {**_bits(2, 2, 8), "student.layers": f"{enc}-1"}),
        sweep.Point("tbt_W2A8", {**_bits(2, 2, 8), "quant.method": "tbt", "student.layers": full}),
        sweep.Point("tbt_W1A8", {**_bits(1, 1, 8), "quant.method": "tbt", "student.layers": full}),
        sweep.Point("tbt_W2A2", {**_bits(2, 2, 2), "quant.method": "tbt", "student.layers": full}),
        sweep.Point("tbt_W1A1", {**_bits(1, 1, 1), "quant.method": "tbt", "student.layers": full}),
    ]


def findings(rows: list[dict], metric: str, enc: int, dec: int) -> list[dict]:
    """Each of the papers' claims with the numbers that decide it."""
    score = {r["point"]: r.get(f"test_{metric}") for r in rows}
    teacher = next(r.get(f"test_{metric}") for r in rows if r["distill"] == "teacher")
    s = lambda name: score.get(name)
    shallow = f"dq_2-2-8_{enc}-{max(dec - 1, 1)}"
    out = []

    def claim(text, needed, holds, detail):
        if any(v is None for v in needed):
            out.append({"claim": text, "holds": None, "detail": "not all points finished"})
        else:
            out.append({"claim": text, "holds": bool(holds()), "detail": detail()})

    claim("8-bit DQ is close to the teacher (within 1 point)", [teacher, s("dq_8-8-8")],
          lambda: abs(teacher - s("dq_8-8-8")) <= 1.0,
          lambda: f"teacher {teacher:.2f}, DQ 8-8-8 {s('dq_8-8-8'):.2f}")
    claim("2-bit quantization without distillation loses clearly more than 2-bit DQ (by > 1 point)",
          [s("qonly_2-2-8"), s("dq_2-2-8")], lambda: s("dq_2-2-8") - s("qonly_2-2-8") > 1.0,
          lambda: f"quant-only 2-2-8 {s('qonly_2-2-8'):.2f}, DQ 2-2-8 {s('dq_2-2-8'):.2f} "
                  f"(quant-only 8-8-8 {s('qonly_8-8-8'):.2f})")
    claim("quality falls as decoder layers are removed", [s("dq_2-2-8"), s(shallow), s(f"dq_2-2-8_{enc}-1")],
          lambda: s("dq_2-2-8") >= s(shallow) >= s(f"dq_2-2-8_{enc}-1") and s("dq_2-2-8") > s(f"dq_2-2-8_{enc}-1"),
          lambda: f"{enc}-{dec}: {s('dq_2-2-8'):.2f}, {shallow.split('_')[-1]}: {s(shallow):.2f}, "
                  f"{enc}-1: {s(f'dq_2-2-8_{enc}-1'):.2f}")
    claim("TBT 2-2-8 is at least as good as DQ-BART 2-2-8 (within 0.5)", [s("tbt_W2A8"), s("dq_2-2-8")],
          lambda: s("tbt_W2A8") >= s("dq_2-2-8") - 0.5,
          lambda: f"TBT W2A8 {s('tbt_W2A8'):.2f}, DQ-BART 2-2-8 {s('dq_2-2-8'):.2f}")
    claim("TBT W1A8 trains to a usable model (at least 80% of the teacher)", [teacher, s("tbt_W1A8")],
          lambda: s("tbt_W1A8") >= 0.8 * teacher,
          lambda: f"TBT W1A8 {s('tbt_W1A8'):.2f} = {100 * s('tbt_W1A8') / teacher:.0f}% of the teacher "
                  f"(W2A2 {s('tbt_W2A2') if s('tbt_W2A2') is not None else float('nan'):.2f}, "
                  f"W1A1 {s('tbt_W1A1') if s('tbt_W1A1') is not None else float('nan'):.2f})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/reproduce")
    ap.add_argument("--config", default="configs/demo.py")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a fixed override for every job, e.g. train.steps=200 for a quicker look")
    args = ap.parse_args(argv)
    sets = dict(sweep.parse_set(s) for s in args.set)
    c = sweep.load_config(args.config, sets)
    enc, dec = (int(v) for v in c.student.layers.split("-"))
    t0 = time.monotonic()
    rc = sweep.run_sweep(args.config, args.workdir, points(enc, dec), sets)
    wall = time.monotonic() - t0
    rows, _, metric = sweep_report.collect_rows(args.workdir)
    found = findings(rows, metric, enc, dec)
    recorded = sum((sweep.load_sweep(args.workdir).get("runs", {}).get(r["point"], {}).get("seconds") or 0)
                   for r in rows)
    lines = [f"# The paper's findings on {args.config} (test {metric})", ""]
    lines += [f"- {'HOLDS' if f['holds'] else ('DOES NOT HOLD' if f['holds'] is False else 'UNDECIDED')}: "
              f"{f['claim']}: {f['detail']}" for f in found]
    lines += ["", f"Jobs' wall time: {recorded / 60:.1f} min (this invocation {wall / 60:.1f} min).", ""]
    with open(os.path.join(args.workdir, "findings.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print("wrote", write_json("reproduce", {"config": args.config, "sets": sets, "metric": metric, "rows": rows,
                                            "findings": found, "jobs_wall_s": recorded}))
    print(f"table: {os.path.join(args.workdir, 'sweep.md')}, plot: {os.path.join(args.workdir, 'tradeoff.png')}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
