"""A sweep's plan: each point's config built and checked in-process, the teacher jobs the
points share, every job's `train.main` command. Runs nothing and writes nothing."""

from __future__ import annotations

import dataclasses
import difflib
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from dq_jax.export import workdir as run_dir
from dq_jax.stages import TEACHER, trained_stages
from train.settings import spec_from_config
from train.sweeps.grid import (
    RESERVED,
    TEACHER_DIR,
    Point,
    SweepError,
    cross,
    expand_grid,
    named_points,
    parse_axis,
    parse_set,
    point_name,
    value_text,
)

REPO = Path(__file__).resolve().parents[2]
# Keys whose value changes the teacher: points that set them cannot share one teacher.
TEACHER_PREFIXES = ("teacher.", "data.")
TEACHER_KEYS = ("seed",)


def _affects_teacher(key: str) -> bool:
    return key in TEACHER_KEYS or key.startswith(TEACHER_PREFIXES)


def _config_file(config_arg: str) -> str:
    """The config file as the jobs (cwd = repo root) see it, with the variant."""
    path, sep, variant = config_arg.partition(":")
    return str(REPO / path) + sep + variant if not os.path.isabs(path) else config_arg


def build_config(config_arg: str, overrides: Mapping[str, str] = ()):
    """The locked ConfigDict `train.main --config CONFIG_ARG --config.K=V ...` would build."""
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
        traceback = any(line.startswith("Traceback") for line in lines)
        raise SweepError(lines[-1] if traceback else " ".join(lines)) from None
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
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise SweepError(f"{where}: unknown config key {key!r}{hint}")


def select_points(
    config_arg: str, grids: Sequence[str] = (), set_texts: Sequence[str] = (), sweep: str | None = None
) -> list[Point]:
    """The points of `--sweep NAME` (`c.sweeps.NAME`, each crossed with the `--grid` axes) or of
    the grid alone; every key is checked against the config first, so that an unknown one is
    named together with the argument it came from."""
    c = build_config(config_arg)
    known = config_keys(c)
    for text in set_texts:
        check_keys([parse_set(text)[0]], known, f"--set {text!r}")
    for text in grids:
        check_keys(parse_axis(text)[0], known, f"--grid {text!r}")
    if not sweep:
        return expand_grid(grids) if grids else []
    named = dict(c.get("sweeps") or {})
    if sweep not in named:
        raise SweepError(
            f"--sweep {sweep}: {config_arg} has no such named sweep; it has {sorted(named) or 'none'} (c.sweeps)."
        )
    where = f"--sweep {sweep} (c.sweeps.{sweep})"
    points = named_points(named[sweep], where)
    for p in points:
        check_keys(p.overrides, known, where)
    return cross(points, expand_grid(grids), f"--sweep {sweep}") if grids else points


def _bits_text(b) -> str:
    return "32" if b in (None, 0, "") else str(b)


def summarize(c) -> dict:
    """What the report shows for a point before it has results: W-E-A, method, distill, layers."""
    q, d = c.quant, c.distill
    distill = ("DQ" + ("-masked" if d.mode == "masked" else "")) if d.enabled else "quant-only"
    return {
        "wea": "-".join(_bits_text(b) for b in (q.weight_bits, q.embed_bits, q.act_bits)),
        "method": q.method,
        "distill": distill,
        "layers": c.student.layers,
        "metric": c.eval.metric,
    }


def point_command(
    config_arg: str, workdir: str, point: Point, shared_teacher_dir: str | None = None, sets: Mapping[str, str] = ()
) -> list[str]:
    """The `train.main` argv of `point` (run with cwd = repo root): `--set` overrides, the
    point's, then those that make it distill from `shared_teacher_dir/teacher_hf`."""
    overrides = {k: value_text(v) for k, v in dict(sets).items()}
    overrides.update(point.overrides)
    if shared_teacher_dir:
        overrides.update(
            {
                "teacher.path": os.path.join(shared_teacher_dir, run_dir.TEACHER_DIR),
                "teacher.scratch": "",
                "teacher.tokenizer": "",
                "teacher.finetune": "False",
            }
        )
    return [
        sys.executable,
        "-m",
        "train.main",
        "--config",
        config_arg,
        "--workdir",
        os.path.join(workdir, point.name),
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]


def _overrides_of(argv: Sequence[str]) -> dict[str, str]:
    return dict(a[len("--config.") :].split("=", 1) for a in argv if a.startswith("--config."))


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


def child_path(path: str) -> str:
    """Paths in commands: as given when run from the repo root, else absolute."""
    return path if os.path.isabs(path) or Path.cwd().resolve() == REPO else os.path.abspath(path)


def plan_sweep(config_arg: str, workdir: str, points: Sequence[Point], sets: Mapping[str, str] = ()) -> Plan:
    """Checks every point's config in-process (unknown keys, types, `spec_from_config`) and
    builds the teacher jobs and all commands. Runs nothing and writes nothing."""
    sets = {k: value_text(v) for k, v in dict(sets).items()}
    names = [p.name for p in points]
    if not points:
        raise SweepError("nothing to sweep: give --grid, --sweep NAME, or points.")
    if len(set(names)) != len(names):
        raise SweepError(f"point names must be unique; {sorted({n for n in names if names.count(n) > 1})} repeat.")
    for n in names:
        if n in RESERVED or n.startswith(TEACHER_DIR + "_"):
            raise SweepError(f"point name {n!r} is reserved (teacher jobs and report files); choose another.")
    known = config_keys(build_config(config_arg))
    check_keys(sets, known, "--set")
    for p in points:
        check_keys(p.overrides, known, f"point {p.name!r}")
        both = sorted(set(p.overrides) & set(sets))
        if both:
            raise SweepError(f"{both[0]} is both a fixed --set override and varied by point {p.name!r}.")
    plan = Plan(config_arg, workdir, sets, list(points), [], {}, {}, {})
    teachers: dict[str, Point] = {}

    def checked(name: str, argv: list[str]):
        """The point's config and spec, built and checked as `train.main` would."""
        try:
            c = build_config(config_arg, _overrides_of(argv))
            return c, spec_from_config(c)
        except (SweepError, ValueError) as e:
            raise SweepError(f"point {name!r}: {e}") from None

    for p in points:
        own, spec = checked(p.name, point_command(config_arg, workdir, p, None, sets))
        teacher = None
        if TEACHER in trained_stages(spec)[0]:
            t_over = {k: v for k, v in p.overrides.items() if _affects_teacher(k)}
            t_name = TEACHER_DIR if not t_over else f"{TEACHER_DIR}_{point_name(t_over)}"
            if t_name not in teachers:
                teachers[t_name] = Point(t_name, {**t_over, "stages": "teacher"})
                argv = point_command(
                    config_arg, workdir, teachers[t_name], None, {k: v for k, v in sets.items() if k != "stages"}
                )
                checked(t_name, argv)
                plan.commands[t_name] = argv
            teacher = t_name
        argv = point_command(config_arg, workdir, p, os.path.join(workdir, teacher) if teacher else None, sets)
        plan.summaries[p.name] = summarize(checked(p.name, argv)[0] if teacher else own)
        plan.commands[p.name], plan.teacher_of[p.name] = argv, teacher
    plan.teachers = list(teachers.values())
    return plan


def command_lines(plan: Plan) -> list[str]:
    """`--print-commands`: the teacher jobs, the points, then the report."""
    report = [sys.executable, "-m", "train.sweep", "--workdir", plan.workdir, "--report"]
    return [shlex.join(plan.commands[name]) for name in plan.jobs()] + [shlex.join(report)]
