"""The paper's table in miniature, offline: DQ-BART's and TBT's findings on the demo task.

    python -m bench.reproduce [--workdir runs/reproduce] [--config configs/demo.py] [--set KEY=VALUE ...]

One teacher, then students distilled from it (a `train.sweep` with explicit points, so it
resumes like any sweep: rerun the same command after an interruption):
- quantization only (task loss, no teacher) at 8-8-8 and 2-2-8;
- DQ-BART at 8-8-8 and 2-2-8 at full depth, and 2-2-8 with a shallower and a 1-layer decoder;
- TBT at W2A8, W1A8, W2A2 and W1A1 (ternary/binary weights, elastic activations at 1-2 bits).
Writes the sweep's `sweep.md`, `sweep.csv` and `tradeoff.png` in the workdir, then checks the
paper's qualitative findings against the numbers and writes `findings.md` there and
`bench/results/reproduce.json`. The default (demo config) takes about 40 minutes on 2 CPU cores.

The paper distills from a teacher fine-tuned to convergence. The demo's own teacher (600
steps) is still improving when it stops, and then every student, trained 400 more steps
from its weights, gains from the extra task training alone: quantization-only students
beat the teacher they started from and the comparison says nothing about distillation. So
the teacher here trains for `teacher.steps=1600` (where its dev score levels off) unless
`--set teacher.steps=...` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench.common import write_json
from train.sweeps.grid import BITS_KEYS, Point, parse_set
from train.sweeps.plan import build_config
from train.sweeps.report import collect_rows
from train.sweeps.runner import run_sweep
from train.sweeps.state import load_sweep

DEFAULT_SETS = {"teacher.steps": "1600"}  # a converged teacher (see the module docstring)


def _bits(w, e, a) -> dict:
    return dict(zip(BITS_KEYS, (str(w), str(e), str(a))))


def points(enc: int, dec: int) -> list[Point]:
    """The table's rows for a teacher with `enc`-`dec` layers."""
    shallow = max(dec - 1, 1)
    full = f"{enc}-{dec}"
    return [
        Point("qonly_8-8-8", {**_bits(8, 8, 8), "distill.enabled": "False", "student.layers": full}),
        Point("qonly_2-2-8", {**_bits(2, 2, 8), "distill.enabled": "False", "student.layers": full}),
        Point("dq_8-8-8", {**_bits(8, 8, 8), "student.layers": full}),
        Point("dq_2-2-8", {**_bits(2, 2, 8), "student.layers": full}),
        Point(f"dq_2-2-8_{enc}-{shallow}", {**_bits(2, 2, 8), "student.layers": f"{enc}-{shallow}"}),
        Point(f"dq_2-2-8_{enc}-1", {**_bits(2, 2, 8), "student.layers": f"{enc}-1"}),
        Point("tbt_W2A8", {**_bits(2, 2, 8), "quant.method": "tbt", "student.layers": full}),
        Point("tbt_W1A8", {**_bits(1, 1, 8), "quant.method": "tbt", "student.layers": full}),
        Point("tbt_W2A2", {**_bits(2, 2, 2), "quant.method": "tbt", "student.layers": full}),
        Point("tbt_W1A1", {**_bits(1, 1, 1), "quant.method": "tbt", "student.layers": full}),
    ]


def findings(rows: list[dict], metric: str, enc: int, dec: int) -> list[dict]:
    """Each of the papers' claims with the numbers that decide it."""
    score = {r["point"]: r.get(f"test_{metric}") for r in rows}
    teacher = next(r.get(f"test_{metric}") for r in rows if r["distill"] == "teacher")
    s = lambda name: score.get(name)

    def f(name: str) -> str:
        return "-" if s(name) is None else f"{s(name):.2f}"

    shallow = f"dq_2-2-8_{enc}-{max(dec - 1, 1)}"
    out = []

    def claim(text, needed, holds, detail, why=lambda: ""):
        if any(v is None for v in needed):
            out.append({"claim": text, "holds": None, "detail": "not all points finished"})
        else:
            ok = bool(holds())
            out.append({"claim": text, "holds": ok, "detail": detail() + ("" if ok else why())})

    claim("8-bit DQ is close to the teacher (at most 1 point below it)", [teacher, s("dq_8-8-8")],
          lambda: teacher - s("dq_8-8-8") <= 1.0,
          lambda: f"teacher {teacher:.2f}, DQ 8-8-8 {f('dq_8-8-8')}")
    claim("2-bit quantization without distillation loses clearly more than 2-bit DQ (by > 1 point)",
          [s("qonly_2-2-8"), s("dq_2-2-8")], lambda: s("dq_2-2-8") - s("qonly_2-2-8") > 1.0,
          lambda: f"quant-only 2-2-8 {f('qonly_2-2-8')}, DQ 2-2-8 {f('dq_2-2-8')} "
                  f"(quant-only 8-8-8 {f('qonly_8-8-8')})",
          lambda: (". Task-loss training alone recovers the 2-bit student fully here (quant-only 2-2-8 is within "
                   "1 point of the teacher): at this model size and training budget the task is easy to learn "
                   "again, which leaves distillation no gap to close"
                   if teacher - s("qonly_2-2-8") <= 1.0 else
                   ". Both lose, and distillation does not recover more of the loss at this scale"))
    claim("quality falls as decoder layers are removed", [s("dq_2-2-8"), s(shallow), s(f"dq_2-2-8_{enc}-1")],
          lambda: s("dq_2-2-8") >= s(shallow) >= s(f"dq_2-2-8_{enc}-1") and s("dq_2-2-8") > s(f"dq_2-2-8_{enc}-1"),
          lambda: f"{enc}-{dec}: {f('dq_2-2-8')}, {shallow.split('_')[-1]}: {f(shallow)}, "
                  f"{enc}-1: {f(f'dq_2-2-8_{enc}-1')}",
          lambda: ". A shallower decoder does as well here: the task needs little decoder depth")
    claim("TBT 2-2-8 is at least as good as DQ-BART 2-2-8", [s("tbt_W2A8"), s("dq_2-2-8")],
          lambda: s("tbt_W2A8") >= s("dq_2-2-8"),
          lambda: f"TBT W2A8 {f('tbt_W2A8')}, DQ-BART 2-2-8 {f('dq_2-2-8')}",
          lambda: f". TBT is {s('dq_2-2-8') - s('tbt_W2A8'):.2f} below; both 2-bit students are within "
                  f"{teacher - min(s('tbt_W2A8'), s('dq_2-2-8')):.2f} of the teacher here, so there is little left "
                  "for TBT's quantizer to win (the paper's gain, 2.3 ROUGE-1 and 2.0 ROUGE-L, is on BART-base XSum, "
                  "where DQ-BART loses 3-4 points)")
    claim("TBT W1A8 trains to a usable model (at least 80% of the teacher)", [teacher, s("tbt_W1A8")],
          lambda: s("tbt_W1A8") >= 0.8 * teacher,
          lambda: f"TBT W1A8 {f('tbt_W1A8')} = {100 * s('tbt_W1A8') / teacher:.0f}% of the teacher "
                  f"(W2A2 {f('tbt_W2A2')}, W1A1 {f('tbt_W1A1')})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/reproduce")
    ap.add_argument("--config", default="configs/demo.py")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a fixed override for every job, e.g. train.steps=200 for a quicker look")
    args = ap.parse_args(argv)
    sets = {**DEFAULT_SETS, **dict(parse_set(s) for s in args.set)}
    c = build_config(args.config, sets)
    enc, dec = (int(v) for v in c.student.layers.split("-"))
    t0 = time.monotonic()
    rc = run_sweep(args.config, args.workdir, points(enc, dec), sets)
    wall = time.monotonic() - t0
    rows, _, metric = collect_rows(args.workdir)
    found = findings(rows, metric, enc, dec)
    recorded = sum((load_sweep(args.workdir).get("runs", {}).get(r["point"], {}).get("seconds") or 0)
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
