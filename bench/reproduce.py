"""The paper's table in miniature, offline: DQ-BART's and TBT's findings on the demo task, at
full data and with the students given a fraction of it.

    python -m bench.reproduce [--workdir runs/reproduce] [--config configs/demo.py]
                              [--fraction 0.1] [--seeds 3] [--set KEY=VALUE ...]

One teacher, trained on the whole training split, then the table twice: once with the students
on the whole split ("full") and once on `--fraction` of it (`student.train_fraction`, a subset
drawn by each student's seed; dev and test splits unchanged). Each table's rows:
- quantization only (task loss, no teacher) at 8-8-8 and 2-2-8;
- DQ-BART at 8-8-8 and 2-2-8 at full depth, and 2-2-8 with a shallower and a 1-layer decoder;
- distillation only: full-precision students at the same three depths (the paper's section 4.4);
- TBT at W2A8, W1A8, W2A2 and W1A1 (ternary/binary weights, elastic activations at 1-2 bits).
Every row with 2-bit weights runs with `--seeds` student seeds (`student.seed` 0, 1, ...: data
order and, with a fraction, the subset), reported as mean and spread. All of it is one
`train.sweep` with explicit points, so it resumes like any sweep: rerun the same command after
an interruption.

Writes the sweep's `sweep.md`, `sweep.csv` and `tradeoff.png` (every job), `reproduce.md` (the
table with seed means, the findings per data setting), `tradeoff_<setting>.png` (seed means)
in the workdir and `bench/results/reproduce.json`.

Why the limited setting: in the paper the teacher is pretrained BART, which knows far more than
the task data the students see; that knowledge is what distillation passes on and what
quantization alone loses. Offline, the stand-in is a teacher that has seen the whole training
split while the students see a tenth of it.

Sizes (`SETS`): the teacher trains `teacher.steps=1600`, where its dev score levels off (a
teacher still improving lets students trained on from it gain from the extra task training
alone, whatever their loss). The students train `train.steps=200` and the dev split is scored
once at the end, so the 51 jobs fit in 90 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench.common import write_json
from bench.reproduce_findings import findings, report
from bench.reproduce_table import FULL, Job, gather, jobs, setting_names
from train.sweeps.grid import parse_set
from train.sweeps.plan import build_config
from train.sweeps.plot import plot_tradeoff
from train.sweeps.report import collect_rows
from train.sweeps.runner import run_sweep
from train.sweeps.state import load_sweep

# A converged teacher (see the module docstring); students sized so the whole run fits 90 minutes.
SETS = {"teacher.steps": "1600", "train.steps": "200", "train.eval_every": "200"}


def _plot(rows: list[dict], metric: str, stats: dict, all_jobs: list[Job], setting: str, path: str, title: str):
    """The trade-off plot of one data setting with one point per row (its seed mean)."""
    key = f"test_{metric}"
    first = {}
    for j in all_jobs:
        if j.setting == setting:
            first.setdefault(j.row.name, j.point.name)
    by_point = {r["point"]: r for r in rows}
    out = [r for r in rows if r["distill"] == "teacher"]
    kinds = {j.row.name: j.row.kind for j in all_jobs}
    label = {"quantization only": "quant-only", "distillation only": "distill-only"}  # else DQ
    for name, point in first.items():
        if (setting, name) in stats and point in by_point:
            out.append(
                {
                    **by_point[point],
                    "point": name,
                    key: stats[(setting, name)].mean,
                    "distill": label.get(kinds[name], "DQ"),
                }
            )
    plot_tradeoff(out, metric, path, title=title)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/reproduce")
    ap.add_argument("--config", default="configs/demo.py")
    ap.add_argument(
        "--fraction",
        type=float,
        default=0.1,
        help="the students' fraction of the training split in the limited setting (0, 1)",
    )
    ap.add_argument("--seeds", type=int, default=3, help="student seeds for each 2-bit-weight row (>= 1)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a fixed override for every job, e.g. train.steps=100 for a quicker look",
    )
    args = ap.parse_args(argv)
    if not 0 < args.fraction < 1:
        ap.error(f"--fraction {args.fraction}: must be in (0, 1); 1 is the full setting, which always runs.")
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: must be at least 1.")
    sets = {**SETS, **dict(parse_set(s) for s in args.set)}
    c = build_config(args.config, sets)
    enc, dec = (int(v) for v in c.student.layers.split("-"))
    all_jobs = jobs(enc, dec, args.fraction, args.seeds)
    settings = setting_names(args.fraction)
    t0 = time.monotonic()
    rc = run_sweep(args.config, args.workdir, [j.point for j in all_jobs], sets)
    wall = time.monotonic() - t0
    rows, _, metric = collect_rows(args.workdir)
    teacher, stats = gather(rows, metric, all_jobs)
    found = {name: findings(teacher, stats, name, enc, dec) for name in settings}
    runs = load_sweep(args.workdir).get("runs", {})
    recorded = sum(v.get("seconds") or 0 for v in runs.values())
    text = report(metric, teacher, stats, settings, found, enc, dec, sets, args.seeds)
    text += f"\nJobs' wall time: {recorded / 60:.1f} min over {len(runs)} jobs (this invocation {wall / 60:.1f} min).\n"
    with open(os.path.join(args.workdir, "reproduce.md"), "w") as f:
        f.write(text)
    for name in settings:
        _plot(
            rows,
            metric,
            stats,
            all_jobs,
            name,
            os.path.join(args.workdir, f"tradeoff_{name}.png"),
            f"{args.config}, students on {'all' if name == FULL else f'{settings[name]:.0%}'} of the training "
            f"data: test {metric} (seed means) vs compression",
        )
    print(text)
    table = [
        {
            "setting": name,
            "row": row,
            "scores": list(st.scores),
            "mean": st.mean,
            "std": st.std,
            "compression_ratio": st.ratio,
        }
        for (name, row), st in stats.items()
    ]
    print(
        "wrote",
        write_json(
            "reproduce",
            {
                "config": args.config,
                "sets": sets,
                "fraction": args.fraction,
                "seeds": args.seeds,
                "metric": metric,
                "teacher": teacher,
                "table": table,
                "findings": found,
                "jobs": rows,
                "jobs_wall_s": recorded,
                "invocation_wall_s": wall,
            },
        ),
    )
    print(
        f"report: {os.path.join(args.workdir, 'reproduce.md')}, per-job table: {os.path.join(args.workdir, 'sweep.md')}"
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
