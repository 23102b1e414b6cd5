"""`DIR/sweep.json`, the sweep's record: the config, the fixed overrides, every teacher and
point with its overrides and command, and per job its status and wall time (`runs`).

    {"config": str, "sets": {key: value},
     "teachers": [{"name", "overrides", "command"}],
     "points": [{"name", "overrides", "teacher": str | None, "summary": {...}, "command"}],
     "runs": {job: {"status", "log", "returncode", "seconds", "attempts", "error"}}}

A job is finished when its `DIR/<job>/results.json` exists.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from train.sweeps.grid import SweepError
from train.sweeps.plan import Plan

SWEEP_FILE = "sweep.json"


def read_json(path: str | Path) -> dict | None:
    """The JSON object in `path`; None when the file is missing or not (yet) whole JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: str | Path, obj) -> None:
    """Replaces `path` at once, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def load_sweep(workdir: str) -> dict:
    sweep = read_json(os.path.join(workdir, SWEEP_FILE))
    if sweep is None:
        raise SweepError(
            f"{os.path.join(workdir, SWEEP_FILE)} not found: start the sweep with --config and --grid or --sweep first."
        )
    return sweep


def is_finished(workdir: str, name: str) -> bool:
    return os.path.exists(os.path.join(workdir, name, "results.json"))


def record_plan(plan: Plan) -> dict:
    """Writes DIR/sweep.json: the plan's points added to those already recorded there (a point
    of the same name must have the same overrides), keeping the recorded job times."""
    path = os.path.join(plan.workdir, SWEEP_FILE)
    old = read_json(path) or {}
    started = old.get("runs") or any(
        os.path.isdir(os.path.join(plan.workdir, j["name"])) for j in old.get("points", []) + old.get("teachers", [])
    )
    if old and not started:  # only planned (--print-commands) so far: the new plan replaces it
        old = {}
    if old and (old.get("config"), old.get("sets")) != (plan.config, plan.sets):
        raise SweepError(
            f"{path} records --config {old.get('config')} with --set {old.get('sets')}; this sweep has "
            f"--config {plan.config} with --set {plan.sets}. Use the same, or another --workdir."
        )
    points = {p["name"]: p for p in old.get("points", [])}
    teachers = {t["name"]: t for t in old.get("teachers", [])}
    for p in plan.points:
        if p.name in points and points[p.name]["overrides"] != p.overrides:
            raise SweepError(
                f"{path} has a point {p.name!r} with overrides {points[p.name]['overrides']}, not "
                f"{p.overrides}; use another --workdir."
            )
        points[p.name] = {
            "name": p.name,
            "overrides": p.overrides,
            "teacher": plan.teacher_of[p.name],
            "summary": plan.summaries[p.name],
            "command": shlex.join(plan.commands[p.name]),
        }
    for t in plan.teachers:
        teachers[t.name] = {"name": t.name, "overrides": t.overrides, "command": shlex.join(plan.commands[t.name])}
    sweep = {
        "config": plan.config,
        "sets": plan.sets,
        "teachers": list(teachers.values()),
        "points": list(points.values()),
        "runs": old.get("runs", {}),
    }
    os.makedirs(plan.workdir, exist_ok=True)
    write_json(path, sweep)
    return sweep
