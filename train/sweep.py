"""Runs a grid of `train.main` jobs, resumably, and tabulates and plots what they give.

    python -m train.sweep --config configs/demo.py --workdir runs/sweep \\
        --grid 'quant.weight_bits+quant.embed_bits=2,8' --grid 'student.layers=3-3,3-2,3-1'
    python -m train.sweep --config configs/demo.py --workdir runs/sweep --sweep bits_layers
    python -m train.sweep --workdir runs/sweep                   # resume the sweep recorded there
    python -m train.sweep --workdir runs/sweep --report          # sweep.csv, sweep.md, tradeoff.png
    python -m train.sweep ... --print-commands                   # the commands, one a line; runs nothing

Syntax
- `--grid 'KEY=V1,V2,...'`: one axis; the points are the cartesian product of all axes, the
  first axis varying slowest. Values are split on ',' except inside brackets, so
  `distill.weights=(1,1),(0.8,3)` has two values. If the value list contains ';', it is split
  on ';' instead and commas stay inside values (`data.train_files=a.jsonl,b.jsonl;c.jsonl`; a
  trailing ';' makes a one-value list). `K1+K2=V1,V2` sets both keys to the same value.
- `--set KEY=VALUE`: a fixed override for every point (and the teacher); the value is taken whole.
- `--sweep NAME`: `c.sweeps.NAME` of the config, a list of points, each a dict of overrides
  (`[{"quant.weight_bits": b, "student.layers": "3-1"} for b in (2, 8)]`), values as Python
  values or as text. The reserved key `"name"` gives the point's directory name; without it
  the name is derived from the overrides as a grid names them (keys that `--grid 'K1+K2=...'`
  would link and that have one value are one part: `webits2_layers3-1`). With `--grid`, every
  named point is crossed with the axes, the named points varying slowest (`<point>_<axes>`).
Values are written as on the `train.main` command line (`--config.KEY=VALUE`), with its type
rules; every point's config is built and checked in-process before anything runs.

Directory (`--workdir DIR`)
- `DIR/<point>/`: the point's `train.main` workdir; the name comes from its overrides
  (`webits2_layers3-1`), stable across runs. `DIR/<point>/sweep.log`: the job's output.
- `DIR/teacher/`: when the config trains a teacher (from scratch, or fine-tunes an HF one), it
  is trained once here with `stages=teacher` and every point distills from `teacher/teacher_hf`.
  Points whose overrides change the teacher (`teacher.*`, `data.*`, `seed`) share one teacher
  per distinct setting instead, in `DIR/teacher_<those overrides>/`. The shared teacher takes
  the other settings (`train.batch_size`, ...) from the config and the `--set` overrides.
- `DIR/sweep.json`: the config, the fixed overrides, every point with its overrides and command,
  and per job the status and wall time (nothing else records it). Written before anything
  runs; a later sweep in DIR must use the same config and `--set`, and adds its points.
- `DIR/sweep.csv`, `DIR/sweep.md`, `DIR/tradeoff.png`: the report, after every sweep and with
  `--report`: a row per teacher and point (W-E-A bits, method, distill, E-D layers, sizes and
  ratios by the paper's convention and of the packed file, dev and test metrics, wall time).
A point whose `results.json` exists is finished and skipped; any other is run again with the
same command, and `train.main` resumes it from its checkpoints. A failing job is reported and
the sweep goes on (`--fail-fast` stops it); the exit status is then 1. Ctrl-C / SIGTERM is
passed to the running job, which saves a checkpoint, and the sweep exits with 128 + signal.
A mistake in the arguments or a point's config is one line and exit status 2, before any job.

In-process: `main(["train.sweep", "--config", ..., "--workdir", ...])`, the program name first
as absl expects (`sys.argv`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from absl import flags

from train.flags import parse_flags
from train.sweeps.grid import Point, SweepError, parse_set
from train.sweeps.plan import child_path, command_lines, plan_sweep, select_points
from train.sweeps.report import write_report
from train.sweeps.runner import run_plan
from train.sweeps.state import SWEEP_FILE, read_json, record_plan


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "config", None, "configs/NAME.py[:variant]; omitted: the one DIR/sweep.json records", flag_values=fv
    )
    flags.DEFINE_string("workdir", None, "the sweep directory", flag_values=fv, required=True)
    flags.DEFINE_multi_string(
        "grid",
        [],
        "an axis KEY=V1,V2 ('K1+K2=...' sets both; ';' separates values that contain commas)",
        flag_values=fv,
    )
    flags.DEFINE_multi_string("set", [], "KEY=VALUE, a fixed override for every job", flag_values=fv)
    flags.DEFINE_string("sweep", None, "NAME: the config's named sweep c.sweeps.NAME", flag_values=fv)
    flags.DEFINE_boolean("print-commands", False, "print the commands one a line; run nothing", flag_values=fv)
    flags.DEFINE_boolean("report", False, "only write the report from DIR/sweep.json", flag_values=fv)
    flags.DEFINE_boolean("fail-fast", False, "stop at the first failing job", flag_values=fv)


def main(argv: Sequence[str]) -> int:
    """Runs (or prints, or reports) the sweep; `argv` is the whole command line, program name
    first (`sys.argv`)."""
    args = parse_flags(argv, _define, __doc__)
    workdir = child_path(args.workdir)
    try:
        if args.report:
            if args.grid or args.sweep or args.set or args.print_commands:
                raise SweepError(
                    "--report reads DIR/sweep.json; it takes no --grid, --sweep, --set or --print-commands."
                )
            rows = write_report(workdir)
            with open(os.path.join(workdir, "sweep.md")) as f:
                print(f.read())
            print(f"{len(rows)} rows: {os.path.join(workdir, 'sweep.csv')}, {os.path.join(workdir, 'tradeoff.png')}")
            return 0
        old = read_json(os.path.join(workdir, SWEEP_FILE))
        if args.config:
            config_arg = child_path(args.config.partition(":")[0]) + "".join(args.config.partition(":")[1:])
            sets = dict(parse_set(s) for s in args.set)
        elif old:
            if args.set:
                raise SweepError(f"--set needs --config; {workdir}/sweep.json records the sweep's --set overrides.")
            config_arg, sets = old["config"], old["sets"]
        else:
            raise SweepError(f"--config is required ({workdir}/sweep.json does not exist yet).")
        points = select_points(config_arg, args.grid, args.set, args.sweep)
        if not points and old:  # resume: every recorded point
            points = [Point(p["name"], p["overrides"]) for p in old["points"]]
        plan = plan_sweep(config_arg, workdir, points, sets)
        if args.print_commands:
            record_plan(plan)
            try:
                print("\n".join(command_lines(plan)), flush=True)
            except BrokenPipeError:  # `... --print-commands | head`
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        return run_plan(plan, fail_fast=args.fail_fast)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any job started
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main(sys.argv))
