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
- `--sweep NAME`: `c.sweeps.NAME` of the config, a tuple of grid strings as above or of explicit
  points `"NAME:KEY=V;KEY=V"` (';' between overrides, commas free inside values).
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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILE = "sweep.json"
TEACHER_DIR = "teacher"
RESERVED = ("teacher", "sweep.json", "sweep.csv", "sweep.md", "tradeoff.png", "sweep.log")
# Keys whose value changes the teacher: points that set them cannot share one teacher.
TEACHER_PREFIXES = ("teacher.", "data.")
TEACHER_KEYS = ("seed",)
# The overrides that make a point distill from the sweep's teacher instead of training its own.
SHARED_TEACHER_KEYS = ("teacher.path", "teacher.scratch", "teacher.tokenizer", "teacher.finetune")
BITS_KEYS = ("quant.weight_bits", "quant.embed_bits", "quant.act_bits")
# Short names for point directories; other keys use their last component.
SHORT = {"quant.weight_bits": "wbits", "quant.embed_bits": "ebits", "quant.act_bits": "abits",
         "student.layers": "layers", "quant.method": "method", "distill.mode": "mode",
         "distill.weights": "weights", "distill.enabled": "distill", "train.steps": "steps",
         "train.learning_rate": "lr", "train.batch_size": "bs", "teacher.steps": "tsteps",
         "teacher.learning_rate": "tlr", "quant.quantize_lm_head": "qhead"}
LINKED_SHORT = {frozenset(("quant.weight_bits", "quant.embed_bits")): "webits",
                frozenset(("quant.weight_bits", "quant.embed_bits", "quant.act_bits")): "bits"}
METRIC_ORDER = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu")
_KEY = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_AXIS = re.compile(rf"^\s*({_KEY}(?:\s*\+\s*{_KEY})*)\s*=(.*)$", re.S)
_SET = re.compile(rf"^\s*({_KEY})\s*=(.*)$", re.S)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class SweepError(ValueError):
    """A mistake in the sweep's arguments, found before anything runs."""


def _value_text(v) -> str:
    """A Python value as `--config.KEY=` takes it."""
    if isinstance(v, str):
        return v
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_value_text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


@dataclasses.dataclass(frozen=True)
class Point:
    """One job of a sweep: a directory name and the config overrides (key -> value text)."""
    name: str
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not _NAME.match(self.name) or len(self.name) > 120:
            raise SweepError(f"point name {self.name!r}: use letters, digits and . _ + - (at most 120).")
        object.__setattr__(self, "overrides", {k: _value_text(v) for k, v in dict(self.overrides).items()})


# ---------------------------------------------------------------- grid syntax and point names

def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside (), [] and {}."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth <= 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    return parts + ["".join(cur)]


def parse_axis(text: str) -> tuple[tuple[str, ...], list[str]]:
    """`'a.b=1,2'` -> (('a.b',), ['1', '2']); `'a+b=1;2'` -> (('a', 'b'), ['1', '2'])."""
    m = _AXIS.match(text)
    if not m:
        raise SweepError(f"bad grid {text!r}: write KEY=V1,V2 (or KEY=V1;V2 when values contain commas).")
    keys = tuple(k.strip() for k in m.group(1).split("+"))
    body = m.group(2)
    if ";" in body:
        values = [v.strip() for v in (body[:-1] if body.rstrip().endswith(";") else body).split(";")]
    else:
        values = [v.strip() for v in _split_top_level(body)]
    if len(set(keys)) != len(keys):
        raise SweepError(f"bad grid {text!r}: a key appears twice.")
    if len(set(values)) != len(values):
        raise SweepError(f"bad grid {text!r}: a value appears twice.")
    return keys, values


def parse_set(text: str) -> tuple[str, str]:
    """`'a.b=value'` -> ('a.b', 'value'), the value taken whole."""
    m = _SET.match(text)
    if not m:
        raise SweepError(f"bad --set {text!r}: write KEY=VALUE, e.g. train.steps=100.")
    return m.group(1), m.group(2).strip()


def parse_point(text: str) -> Point:
    """`'name:a.b=1;c=x,y'` -> Point('name', {'a.b': '1', 'c': 'x,y'})."""
    name, sep, body = text.partition(":")
    if not sep:
        raise SweepError(f"bad point {text!r}: write NAME:KEY=V;KEY=V.")
    overrides = {}
    for item in (s for s in body.split(";") if s.strip()):
        m = _SET.match(item)
        if not m:
            raise SweepError(f"bad point {text!r}: {item!r} is not KEY=VALUE.")
        if m.group(1) in overrides:
            raise SweepError(f"bad point {text!r}: {m.group(1)} is set twice.")
        overrides[m.group(1)] = m.group(2).strip()
    return Point(name.strip(), overrides)


def _short(keys: Sequence[str], all_keys: Iterable[str]) -> str:
    if len(keys) > 1:
        return LINKED_SHORT.get(frozenset(keys)) or "+".join(_short((k,), all_keys) for k in keys)
    key = keys[0]
    if key in SHORT:
        return SHORT[key]
    last = key.rsplit(".", 1)[-1]
    clash = any(k != key and (SHORT.get(k) or k.rsplit(".", 1)[-1]) == last for k in all_keys)
    return key if clash else last


def _name_part(short: str, key: str, value: str) -> str:
    if key in BITS_KEYS and value.strip().lower() in ("0", "fp", "none"):
        value = "32"  # full precision, as the W-E-A column writes it
    v = re.sub(r"[\s,/\\:;=]+", "-", value.strip().strip("()[]{}'\""))
    v = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._+-]", "", v)).strip("-") or "none"
    return short + (v if v[0].isdigit() else "-" + v)


def _digest(overrides: Mapping[str, str]) -> str:
    return hashlib.sha1(json.dumps(sorted(overrides.items())).encode()).hexdigest()[:8]


def _finish_name(name: str, overrides: Mapping[str, str], taken: set[str]) -> str:
    if len(name) > 96:
        name = name[:80].rstrip("_-.") + "_" + _digest(overrides)
    if name in taken or name in RESERVED or name.startswith(TEACHER_DIR + "_"):
        name = f"{name}_{_digest(overrides)}"
    taken.add(name)
    return name


def point_name(overrides: Mapping[str, str], taken: set[str] | None = None) -> str:
    """A readable, filesystem-safe name for `overrides` (one part per key, in order)."""
    overrides = {k: _value_text(v) for k, v in overrides.items()}
    parts = [_name_part(_short((k,), overrides), k, v) for k, v in overrides.items()]
    return _finish_name("_".join(parts) or "base", overrides, set() if taken is None else taken)


def expand_grid(grids: Sequence[str]) -> list[Point]:
    """The cartesian product of the axes, the first axis varying slowest."""
    axes = [parse_axis(g) for g in grids]
    all_keys = [k for keys, _ in axes for k in keys]
    dupes = sorted({k for k in all_keys if all_keys.count(k) > 1})
    if dupes:
        raise SweepError(f"{dupes[0]} is in more than one grid axis.")
    points, taken = [], set()
    for combo in itertools.product(*(values for _, values in axes)):
        overrides, parts = {}, []
        for (keys, _), value in zip(axes, combo):
            overrides.update({k: value for k in keys})
            parts.append(_name_part(_short(keys, all_keys), keys[0], value))
        points.append(Point(_finish_name("_".join(parts) or "base", overrides, taken), overrides))
    return points


def points_from_entries(entries: Sequence[str] | str) -> list[Point]:
    """A named sweep's entries: all grid strings (expanded) or all point strings `NAME:K=V;K=V`."""
    entries = (entries,) if isinstance(entries, str) else tuple(entries)

    def is_point(s: str) -> bool:
        return ":" in s and ("=" not in s or s.index(":") < s.index("="))

    kinds = {is_point(e) for e in entries}
    if len(kinds) > 1:
        raise SweepError("a named sweep holds either grid strings ('KEY=V1,V2') or points ('NAME:KEY=V;KEY=V'), "
                         "not both.")
    if kinds != {True}:
        return expand_grid(entries)
    points = [parse_point(e) for e in entries]
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise SweepError(f"point names must be unique; {sorted({n for n in names if names.count(n) > 1})} repeat.")
    return points


# ---------------------------------------------------------------- configs, in-process

def _affects_teacher(key: str) -> bool:
    return key in TEACHER_KEYS or key.startswith(TEACHER_PREFIXES)


def _config_file(config_arg: str) -> str:
    """The config file as the jobs (cwd = repo root) see it, with the variant."""
    path, sep, variant = config_arg.partition(":")
    return str(REPO / path) + sep + variant if not os.path.isabs(path) else config_arg


def load_config(config_arg: str, overrides: Mapping[str, str] = ()):
    """The locked ConfigDict `train.main --config CONFIG_ARG --config.K=V ...` would build."""
    from absl import flags
    from ml_collections import config_flags
    path = _config_file(config_arg).partition(":")[0]
    if not os.path.isfile(path):
        raise SweepError(f"--config {config_arg}: {path} does not exist.")
    argv = ["sweep", "--config", _config_file(config_arg)] + [f"--config.{k}={v}" for k, v in dict(overrides).items()]
    fv = flags.FlagValues()  # config_flags reads the overrides from sys_argv, not from the parse call
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    try:
        fv(argv)
        return fv["config"].value
    except flags.Error as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise SweepError(lines[-1] if any(line.startswith("Traceback") for line in lines) else " ".join(lines)) from None
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        raise SweepError(str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")) from None


def config_keys(config) -> set[str]:
    """Every leaf key of a ConfigDict, dotted."""
    keys = set()
    for k, v in config.items():
        if hasattr(v, "items") and not isinstance(v, dict):
            keys |= {f"{k}.{sub}" for sub in config_keys(v)}
        keys.add(k)
    return keys


def check_keys(keys: Iterable[str], known: set[str], where: str) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise SweepError(f"{where}: unknown config key {key!r}{hint}")


def _trains_teacher(c) -> bool:
    stages = {s.strip() for s in c.stages.split(",")}
    return "teacher" in stages and bool((c.teacher.path and c.teacher.finetune) or
                                        (not c.teacher.path and c.teacher.scratch))


def _bits_text(b) -> str:
    return "32" if b in (None, 0, "") else str(b)


def summarize(c) -> dict:
    """What the report shows for a point before it has results: W-E-A, method, distill, layers."""
    q, d = c.quant, c.distill
    distill = ("DQ" + ("-masked" if d.mode == "masked" else "")) if d.enabled else "quant-only"
    return {"wea": "-".join(_bits_text(b) for b in (q.weight_bits, q.embed_bits, q.act_bits)),
            "method": q.method, "distill": distill, "layers": c.student.layers, "metric": c.eval.metric}


def point_command(config_arg: str, workdir: str, point: Point, shared_teacher_dir: str | None = None,
                  sets: Mapping[str, str] = ()) -> list[str]:
    """The `train.main` argv of `point` (run with cwd = repo root): `--set` overrides, the
    point's, then those that make it distill from `shared_teacher_dir/teacher_hf`."""
    overrides = {k: _value_text(v) for k, v in dict(sets).items()}
    overrides.update(point.overrides)
    if shared_teacher_dir:
        overrides.update({"teacher.path": os.path.join(shared_teacher_dir, "teacher_hf"), "teacher.scratch": "",
                          "teacher.tokenizer": "", "teacher.finetune": "False"})
    return [sys.executable, "-m", "train.main", "--config", config_arg,
            "--workdir", os.path.join(workdir, point.name), *(f"--config.{k}={v}" for k, v in overrides.items())]


def _overrides_of(argv: Sequence[str]) -> dict[str, str]:
    return dict(a[len("--config."):].split("=", 1) for a in argv if a.startswith("--config."))


# ---------------------------------------------------------------- the plan: points, teachers, commands

@dataclasses.dataclass
class Plan:
    config: str  # the config argument as the jobs see it (cwd = repo root)
    workdir: str  # the sweep directory as the jobs see it
    sets: dict[str, str]
    points: list[Point]
    teachers: list[Point]  # teacher jobs (stages=teacher), before the points that use them
    teacher_of: dict[str, str | None]  # point name -> its teacher job's name (None: it needs none)
    commands: dict[str, list[str]]  # job name -> argv
    summaries: dict[str, dict]

    def jobs(self) -> list[str]:
        return [t.name for t in self.teachers] + [p.name for p in self.points]


def _child_path(path: str) -> str:
    """Paths in commands: as given when run from the repo root, else absolute."""
    return path if os.path.isabs(path) or Path.cwd().resolve() == REPO else os.path.abspath(path)


def plan_sweep(config_arg: str, workdir: str, points: Sequence[Point], sets: Mapping[str, str] = ()) -> Plan:
    """Checks every point's config in-process (unknown keys, types, `spec_from_config`) and
    builds the teacher jobs and all commands. Runs nothing and writes nothing."""
    from train.settings import spec_from_config
    sets = {k: _value_text(v) for k, v in dict(sets).items()}
    names = [p.name for p in points]
    if not points:
        raise SweepError("nothing to sweep: give --grid, --sweep NAME, or points.")
    if len(set(names)) != len(names):
        raise SweepError(f"point names must be unique; {sorted({n for n in names if names.count(n) > 1})} repeat.")
    for n in names:
        if n in RESERVED or n.startswith(TEACHER_DIR + "_"):
            raise SweepError(f"point name {n!r} is reserved (teacher jobs and report files); choose another.")
    known = config_keys(load_config(config_arg))
    check_keys(sets, known, "--set")
    for p in points:
        check_keys(p.overrides, known, f"point {p.name!r}")
        both = sorted(set(p.overrides) & set(sets))
        if both:
            raise SweepError(f"{both[0]} is both a fixed --set override and varied by point {p.name!r}.")
    plan = Plan(config_arg, workdir, sets, list(points), [], {}, {}, {})
    teachers: dict[str, Point] = {}

    def checked(name: str, argv: list[str]):
        try:
            c = load_config(config_arg, _overrides_of(argv))
            spec_from_config(c)
            return c
        except (SweepError, ValueError) as e:
            raise SweepError(f"point {name!r}: {e}") from None

    for p in points:
        own = checked(p.name, point_command(config_arg, workdir, p, None, sets))
        teacher = None
        if _trains_teacher(own):
            t_over = {k: v for k, v in p.overrides.items() if _affects_teacher(k)}
            t_name = TEACHER_DIR if not t_over else f"{TEACHER_DIR}_{point_name(t_over)}"
            if t_name not in teachers:
                teachers[t_name] = Point(t_name, {**t_over, "stages": "teacher"})
                argv = point_command(config_arg, workdir, teachers[t_name], None,
                                     {k: v for k, v in sets.items() if k != "stages"})
                checked(t_name, argv)
                plan.commands[t_name] = argv
            teacher = t_name
        argv = point_command(config_arg, workdir, p, os.path.join(workdir, teacher) if teacher else None, sets)
        plan.summaries[p.name] = summarize(checked(p.name, argv) if teacher else own)
        plan.commands[p.name], plan.teacher_of[p.name] = argv, teacher
    plan.teachers = list(teachers.values())
    return plan


# ---------------------------------------------------------------- sweep.json

def _read_json(path: str | Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: str | Path, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def load_sweep(workdir: str) -> dict:
    sweep = _read_json(os.path.join(workdir, SWEEP_FILE))
    if sweep is None:
        raise SweepError(f"{os.path.join(workdir, SWEEP_FILE)} not found: start the sweep with --config and --grid "
                         "or --sweep first.")
    return sweep


def record_plan(plan: Plan) -> dict:
    """Writes DIR/sweep.json: the plan's points added to those already recorded there (a point
    of the same name must have the same overrides), keeping the recorded job times."""
    path = os.path.join(plan.workdir, SWEEP_FILE)
    old = _read_json(path) or {}
    started = old.get("runs") or any(os.path.isdir(os.path.join(plan.workdir, j["name"]))
                                     for j in old.get("points", []) + old.get("teachers", []))
    if old and not started:  # only planned (--print-commands) so far: the new plan replaces it
        old = {}
    if old and (old.get("config"), old.get("sets")) != (plan.config, plan.sets):
        raise SweepError(f"{path} records --config {old.get('config')} with --set {old.get('sets')}; this sweep has "
                         f"--config {plan.config} with --set {plan.sets}. Use the same, or another --workdir.")
    points = {p["name"]: p for p in old.get("points", [])}
    teachers = {t["name"]: t for t in old.get("teachers", [])}
    for p in plan.points:
        if p.name in points and points[p.name]["overrides"] != p.overrides:
            raise SweepError(f"{path} has a point {p.name!r} with overrides {points[p.name]['overrides']}, not "
                             f"{p.overrides}; use another --workdir.")
        points[p.name] = {"name": p.name, "overrides": p.overrides, "teacher": plan.teacher_of[p.name],
                          "summary": plan.summaries[p.name], "command": shlex.join(plan.commands[p.name])}
    for t in plan.teachers:
        teachers[t.name] = {"name": t.name, "overrides": t.overrides, "command": shlex.join(plan.commands[t.name])}
    sweep = {"config": plan.config, "sets": plan.sets, "teachers": list(teachers.values()),
             "points": list(points.values()), "runs": old.get("runs", {})}
    os.makedirs(plan.workdir, exist_ok=True)
    _write_json(path, sweep)
    return sweep


def command_lines(plan: Plan) -> list[str]:
    """`--print-commands`: the teacher jobs, the points, then the report."""
    report = [sys.executable, "-m", "train.sweep", "--workdir", plan.workdir, "--report"]
    return [shlex.join(plan.commands[name]) for name in plan.jobs()] + [shlex.join(report)]


# ---------------------------------------------------------------- running

def is_finished(workdir: str, name: str) -> bool:
    return os.path.exists(os.path.join(workdir, name, "results.json"))


def _die_with_parent() -> None:
    """In the job: SIGTERM when the sweep dies, even by SIGKILL (Linux), so no orphan holds the
    point's workdir lock; the job saves a checkpoint and exits."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Stop:
    """SIGINT/SIGTERM while the sweep runs: remember the first, pass each to the running job."""

    def __init__(self):
        self.signum, self.child = None, None

    def __call__(self, signum, _frame):
        self.signum = self.signum or signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


@contextlib.contextmanager
def _sweep_lock(workdir: str):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, ".sweep.lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another sweep is running in {workdir}; wait for it or use another --workdir.") from None
        yield


def _run_job(argv: list[str], log_path: str, stop: _Stop, bar) -> int:
    """Runs one job (own process group: a terminal Ctrl-C reaches it once, through the sweep),
    its output to `log_path`; the bar shows its last output line."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    last = [""]
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                process_group=0, preexec_fn=_die_with_parent)
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
    from tqdm import tqdm
    stop, failed = _Stop(), []
    jobs = plan.jobs()
    path = os.path.join(plan.workdir, SWEEP_FILE)
    with _sweep_lock(plan.workdir), stop.installed():
        sweep = record_plan(plan)
        runs = sweep["runs"]
        done = [j for j in jobs if is_finished(plan.workdir, j)]
        bar = tqdm(total=len(jobs), initial=len(done), desc="sweep", unit="job", file=sys.stderr,
                   dynamic_ncols=True)
        for name in jobs:
            if stop.signum or (fail_fast and failed):
                break
            if is_finished(plan.workdir, name):
                bar.write(f"skip {name}: finished ({os.path.join(plan.workdir, name, 'results.json')} exists)")
                continue
            if name not in plan.teacher_of and all(is_finished(plan.workdir, p.name) for p in plan.points
                                                   if plan.teacher_of[p.name] == name):
                bar.write(f"skip {name}: every point that uses this teacher is finished")
                bar.update(1)
                continue
            teacher = plan.teacher_of.get(name)
            if teacher and not is_finished(plan.workdir, teacher):
                bar.write(f"skip {name}: its teacher {teacher} did not finish")
                failed.append(name)
                runs[name] = {**runs.get(name, {}), "status": "failed", "error": f"teacher {teacher} did not finish"}
                _write_json(path, sweep)
                continue
            log_path = os.path.join(plan.workdir, name, "sweep.log")
            bar.set_description(name)
            bar.write(f"run  {name}  (log: {log_path})")
            record = runs.get(name, {}) if os.path.isdir(os.path.join(plan.workdir, name)) else {}
            runs[name] = {**record, "status": "running", "log": log_path}
            _write_json(path, sweep)
            start = time.monotonic()
            rc = _run_job(plan.commands[name], log_path, stop, bar)
            seconds = time.monotonic() - start
            finished = is_finished(plan.workdir, name)
            status = "done" if finished else ("interrupted" if stop.signum else "failed")
            runs[name] = {**runs[name], "status": status, "returncode": rc,
                          "seconds": round(record.get("seconds", 0.0) + seconds, 2),
                          "attempts": record.get("attempts", 0) + 1}
            _write_json(path, sweep)
            if finished:
                bar.update(1)
                bar.write(f"done {name} in {seconds:.0f} s")
            elif status == "failed":
                failed.append(name)
                bar.write(f"FAILED {name} (exit {rc}); last lines of {log_path}:\n{_tail(log_path)}")
            else:
                bar.write(f"stopped {name} ({signal.Signals(stop.signum).name}); rerun the sweep to resume it")
        bar.set_description("sweep")
        bar.close()
    if report:
        from train.sweep_report import write_report
        try:
            write_report(plan.workdir)
            with open(os.path.join(plan.workdir, "sweep.md")) as f:
                print("\n" + f.read().strip() + "\n")
            print(f"report: {os.path.join(plan.workdir, 'sweep.md')}, sweep.csv, tradeoff.png")
        except Exception as e:  # the jobs' outcome decides the exit status, not the plot
            print(f"warning: the report failed: {e!r}", file=sys.stderr)
    if stop.signum:
        print(f"sweep stopped by {signal.Signals(stop.signum).name}; finished points stay finished, rerun the same "
              "command to go on.", file=sys.stderr)
        return 128 + stop.signum
    if failed:
        print(f"error: {len(failed)} job(s) failed: {', '.join(failed)} (logs: {plan.workdir}/<job>/sweep.log)",
              file=sys.stderr)
        return 1
    return 0


def run_sweep(config_arg: str, workdir: str, points: Sequence[Point], sets: Mapping[str, str] = (), *,
              fail_fast: bool = False, report: bool = True) -> int:
    """Plans (checks every point first), records sweep.json, runs what is unfinished, reports.
    For scripts: `run_sweep('configs/demo.py', 'runs/x', [Point('a', {'student.layers': '3-1'})])`."""
    return run_plan(plan_sweep(config_arg, _child_path(workdir), points, sets), fail_fast=fail_fast, report=report)


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="configs/NAME.py[:variant]; omitted: the one DIR/sweep.json records")
    p.add_argument("--workdir", required=True, help="the sweep directory")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="an axis ('K1+K2=...' sets both; ';' separates values that contain commas)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a fixed override for every job")
    p.add_argument("--sweep", metavar="NAME", help="the config's named sweep c.sweeps.NAME")
    p.add_argument("--print-commands", action="store_true", help="print the commands one a line; run nothing")
    p.add_argument("--report", action="store_true", help="only write the report from DIR/sweep.json")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing job")
    return p


def _points_from_args(args, config_arg: str) -> list[Point]:
    """The points of --sweep and --grid, each key checked against the config first, so that an
    unknown key is named together with the argument it came from."""
    c = load_config(config_arg)
    known = config_keys(c)
    for text in args.set:
        check_keys([parse_set(text)[0]], known, f"--set {text!r}")
    for text in args.grid:
        check_keys(parse_axis(text)[0], known, f"--grid {text!r}")
    if not args.sweep:
        return expand_grid(args.grid) if args.grid else []
    named = dict(c.get("sweeps") or {})
    if args.sweep not in named:
        raise SweepError(f"--sweep {args.sweep}: {config_arg} has no such named sweep; it has "
                         f"{sorted(named) or 'none'} (c.sweeps).")
    entries = (named[args.sweep],) if isinstance(named[args.sweep], str) else tuple(named[args.sweep])
    points = points_from_entries(entries)
    for p in points:
        check_keys(p.overrides, known, f"--sweep {args.sweep} (c.sweeps.{args.sweep})")
    if not args.grid:
        return points
    if any(":" in e.partition("=")[0] for e in entries):
        raise SweepError(f"--sweep {args.sweep} lists explicit points; it cannot be combined with --grid.")
    return expand_grid(entries + tuple(args.grid))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir = _child_path(args.workdir)
    try:
        if args.report:
            from train.sweep_report import write_report
            if args.grid or args.sweep or args.set or args.print_commands:
                raise SweepError("--report reads DIR/sweep.json; it takes no --grid, --sweep, --set or --print-commands.")
            rows = write_report(workdir)
            with open(os.path.join(workdir, "sweep.md")) as f:
                print(f.read())
            print(f"{len(rows)} rows: {os.path.join(workdir, 'sweep.csv')}, {os.path.join(workdir, 'tradeoff.png')}")
            return 0
        old = _read_json(os.path.join(workdir, SWEEP_FILE))
        if args.config:
            config_arg = _child_path(args.config.partition(":")[0]) + "".join(args.config.partition(":")[1:])
            sets = dict(parse_set(s) for s in args.set)
        elif old:
            if args.set:
                raise SweepError(f"--set needs --config; {workdir}/sweep.json records the sweep's --set overrides.")
            config_arg, sets = old["config"], old["sets"]
        else:
            raise SweepError(f"--config is required ({workdir}/sweep.json does not exist yet).")
        points = _points_from_args(args, config_arg)
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
    sys.exit(main())
