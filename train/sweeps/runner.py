"""Runs a plan: each unfinished job as a `train.main` subprocess, teachers before their points,
one sweep per directory at a time, signals passed on to the running job."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from tqdm import tqdm

from dq_jax.utils import workdir_lock
from dq_jax.utils.stop_signals import StopRequests
from train.sweeps.grid import Point, SweepError
from train.sweeps.plan import REPO, Plan, child_path, plan_sweep
from train.sweeps.report import write_report
from train.sweeps.state import SWEEP_FILE, is_finished, record_plan, write_json


def _die_with_parent() -> None:
    """In the job: SIGTERM when the sweep dies, even by SIGKILL (Linux), so no orphan holds the
    point's workdir lock; the job saves a checkpoint and exits."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _sweep_lock(workdir: str) -> contextlib.ExitStack:
    """Holds `DIR/.sweep.lock` until the returned stack closes; SweepError if another sweep has it."""
    busy = f"another sweep is running in {workdir}; wait for it or use another --workdir."
    held = contextlib.ExitStack()
    try:  # the message is a format string (`{owner}`): braces in the path stay braces
        held.enter_context(
            workdir_lock.hold(os.path.join(workdir, ".sweep.lock"), busy.replace("{", "{{").replace("}", "}}"))
        )
    except workdir_lock.Busy as e:
        raise SweepError(str(e)) from None
    return held


def _run_job(argv: list[str], log_path: str, stop: StopRequests, bar) -> int:
    """Runs one job (own process group: a terminal Ctrl-C reaches it once, through the sweep),
    its output to `log_path`; the bar shows its last output line. Returns its exit status."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    last = [""]
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        stop.child = proc

        def pump():
            while chunk := os.read(proc.stdout.fileno(), 65536):
                log.write(chunk)
                log.flush()
                lines = [s.strip() for s in re.split(rb"[\r\n]", chunk) if s.strip()]
                if lines:
                    last[0] = lines[-1].decode(errors="replace")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        shown = None
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if bar.disable or last[0] == shown or not sys.stderr.isatty():
                    continue
                shown = last[0]
                bar.set_postfix_str(shown[-70:], refresh=True)
        reader.join()
        proc.stdout.close()
        stop.child = None
    return rc


def _tail(path: str, n: int = 15) -> str:
    with open(path, errors="replace") as f:
        lines = [line.rstrip() for line in re.split(r"[\r\n]", f.read()[-20000:]) if line.strip()]
    return "\n".join("    " + line for line in lines[-n:])


def run_plan(plan: Plan, *, fail_fast: bool = False, report: bool = True) -> int:
    """Runs the plan's unfinished jobs, each teacher before its points; writes sweep.json as
    it goes and the report at the end. Returns the exit status (0, 1: failures, 128 + signal)."""
    stop, failed = StopRequests(), []
    jobs = plan.jobs()
    path = os.path.join(plan.workdir, SWEEP_FILE)
    with _sweep_lock(plan.workdir), stop.installed():
        sweep = record_plan(plan)
        runs = sweep["runs"]
        done = [j for j in jobs if is_finished(plan.workdir, j)]
        bar = tqdm(total=len(jobs), initial=len(done), desc="sweep", unit="job", file=sys.stderr, dynamic_ncols=True)
        for name in jobs:
            if stop.signum or (fail_fast and failed):
                break
            if is_finished(plan.workdir, name):
                bar.write(f"skip {name}: finished ({os.path.join(plan.workdir, name, 'results.json')} exists)")
                continue
            if name not in plan.teacher_of and all(
                is_finished(plan.workdir, p.name) for p in plan.points if plan.teacher_of[p.name] == name
            ):
                bar.write(f"skip {name}: every point that uses this teacher is finished")
                bar.update(1)
                continue
            teacher = plan.teacher_of.get(name)
            if teacher and not is_finished(plan.workdir, teacher):
                bar.write(f"skip {name}: its teacher {teacher} did not finish")
                failed.append(name)
                runs[name] = {**runs.get(name, {}), "status": "failed", "error": f"teacher {teacher} did not finish"}
                write_json(path, sweep)
                continue
            log_path = os.path.join(plan.workdir, name, "sweep.log")
            bar.set_description(name)
            bar.write(f"run  {name}  (log: {log_path})")
            record = runs.get(name, {}) if os.path.isdir(os.path.join(plan.workdir, name)) else {}
            runs[name] = {**record, "status": "running", "log": log_path}
            write_json(path, sweep)
            start = time.monotonic()
            rc = _run_job(plan.commands[name], log_path, stop, bar)
            seconds = time.monotonic() - start
            finished = is_finished(plan.workdir, name)
            status = "done" if finished else ("interrupted" if stop.signum else "failed")
            runs[name] = {
                **runs[name],
                "status": status,
                "returncode": rc,
                "seconds": round(record.get("seconds", 0.0) + seconds, 2),
                "attempts": record.get("attempts", 0) + 1,
            }
            write_json(path, sweep)
            if finished:
                bar.update(1)
                bar.write(f"done {name} in {seconds:.0f} s")
            elif status == "failed":
                failed.append(name)
                bar.write(f"FAILED {name} (exit {rc}); last lines of {log_path}:\n{_tail(log_path)}")
            else:
                bar.write(f"stopped {name} ({stop.name}); rerun the sweep to resume it")
        bar.set_description("sweep")
        bar.close()
    if report:
        try:
            write_report(plan.workdir)
            with open(os.path.join(plan.workdir, "sweep.md")) as f:
                print("\n" + f.read().strip() + "\n")
            print(f"report: {os.path.join(plan.workdir, 'sweep.md')}, sweep.csv, tradeoff.png")
        except Exception as e:  # the jobs' outcome decides the exit status, not the plot
            print(f"warning: the report failed: {e!r}", file=sys.stderr)
    if stop.signum:
        print(
            f"sweep stopped by {stop.name}; finished points stay finished, rerun the same command to go on.",
            file=sys.stderr,
        )
        return 128 + stop.signum
    if failed:
        print(
            f"error: {len(failed)} job(s) failed: {', '.join(failed)} (logs: {plan.workdir}/<job>/sweep.log)",
            file=sys.stderr,
        )
        return 1
    return 0


def run_sweep(
    config_arg: str,
    workdir: str,
    points: Sequence[Point],
    sets: Mapping[str, str] = (),
    *,
    fail_fast: bool = False,
    report: bool = True,
) -> int:
    """Plans (checks every point first), records sweep.json, runs what is unfinished, reports.
    For scripts: `run_sweep('configs/demo.py', 'runs/x', [Point('a', {'student.layers': '3-1'})])`."""
    return run_plan(plan_sweep(config_arg, child_path(workdir), points, sets), fail_fast=fail_fast, report=report)
