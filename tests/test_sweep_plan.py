"""train.sweep before anything runs: config and argument checks, plans and the printed commands."""

import json
import re
import shlex

import pytest

from dq_jax.utils import workdir_lock
from tests.sweep_helpers import PY, at_repo_root  # noqa: F401 - an autouse fixture: paths are repo-relative
from train import sweep
from train.sweeps import grid, plan, runner
from train.sweeps.grid import Point

# ---------------------------------------------------------------- checks before anything runs


def _main(capsys, *args):
    code = sweep.main(["train.sweep", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--grid", "quant.wieght_bits=2,8"],
            "error: --grid 'quant.wieght_bits=2,8': unknown config key "
            "'quant.wieght_bits'; did you mean 'quant.weight_bits'?",
        ),
        (
            ["--grid", "quant.weight_bits=2", "--set", "train.stepz=4"],
            "error: --set 'train.stepz=4': unknown config key 'train.stepz'; did you mean 'train.steps'?",
        ),
        (
            ["--grid", "quant.weight_bits=two,8"],
            "error: point 'wbits-two': flag --config.quant.weight_bits=two: "
            "invalid literal for int() with base 10: 'two'",
        ),
        (
            ["--grid", "student.layers=3x3"],
            "error: point 'layers3x3': student.layers='3x3': write encoder-decoder layer counts, e.g. '6-3'.",
        ),
        (
            ["--sweep", "nope"],
            "error: --sweep nope: configs/demo.py has no such named sweep; it has "
            "['bits_layers', 'dq_vs_tbt'] (c.sweeps).",
        ),
        (
            ["--grid", "quant.weight_bits=2", "--set", "quant.weight_bits=8"],
            "error: quant.weight_bits is both a fixed --set override and varied by point 'wbits2'.",
        ),
        (
            ["--sweep", "bits_layers", "--grid", "quant.embed_bits=4"],
            "error: quant.embed_bits is set by --sweep bits_layers point 'webits2_layers3-3' and by a --grid axis.",
        ),
    ],
)
def test_config_mistakes_fail_before_anything_runs(capsys, tmp_path, args, message):
    code, out, err = _main(capsys, "--config", "configs/demo.py", "--workdir", str(tmp_path / "s"), *args)
    assert (code, out, err.strip()) == (2, "", message)
    assert not (tmp_path / "s").exists()


MISTAKEN_SWEEPS = """
from configs import demo


def get_config(arg=None):
    c = demo.get_config(arg)
    with c.unlocked():
        c.sweeps.typo = [{"quant.method": "tbt"}, {"name": "x", "quant.wieght_bits": 2}]
        c.sweeps.bad_name = [{"name": "a b", "quant.weight_bits": 2}]
        c.sweeps.grid_strings = ("quant.weight_bits=2,8",)
    return c
"""


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "typo",
            "error: --sweep typo (c.sweeps.typo): unknown config key 'quant.wieght_bits'; did you mean "
            "'quant.weight_bits'?",
        ),
        (
            "bad_name",
            "error: --sweep bad_name (c.sweeps.bad_name): point name 'a b': use letters, digits and . _ + - "
            "(at most 120).",
        ),
        (
            "grid_strings",
            "error: --sweep grid_strings (c.sweeps.grid_strings): write a list of dicts of overrides, "
            "e.g. [{'name': 'dq', 'quant.weight_bits': 2}, {'quant.weight_bits': 8}].",
        ),
    ],
)
def test_named_sweep_mistakes_fail_before_anything_runs(capsys, tmp_path, name, message):
    config = tmp_path / "mistaken.py"
    config.write_text(MISTAKEN_SWEEPS)
    code, out, err = _main(capsys, "--config", str(config), "--workdir", str(tmp_path / "s"), "--sweep", name)
    assert (code, out, err.strip()) == (2, "", message)
    assert not (tmp_path / "s").exists()


def test_named_sweep_with_grid_prints_each_point_crossed_with_the_axes(capsys, tmp_path):
    wd = str(tmp_path / "s")
    code, out, err = _main(
        capsys,
        "--config",
        "configs/demo.py",
        "--workdir",
        wd,
        "--sweep",
        "dq_vs_tbt",
        "--grid",
        "student.layers=3-1,3-2",
        "--print-commands",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert [shlex.split(line)[6].rsplit("/", 1)[1] for line in lines[:-1]] == [
        "teacher",
        "dq_2-2-8_layers3-1",
        "dq_2-2-8_layers3-2",
        "tbt_W2A8_layers3-1",
        "tbt_W2A8_layers3-2",
        "tbt_W1A8_layers3-1",
        "tbt_W1A8_layers3-2",
        "tbt_W2A2_layers3-1",
        "tbt_W2A2_layers3-2",
        "tbt_W1A1_layers3-1",
        "tbt_W1A1_layers3-2",
    ]
    assert shlex.split(lines[6])[7:11] == [
        "--config.quant.method=tbt",
        "--config.quant.weight_bits=1",
        "--config.quant.embed_bits=1",
        "--config.student.layers=3-2",
    ]


def test_plan_checks_points_given_in_python():
    with pytest.raises(grid.SweepError, match=re.escape("point 'p': unknown config key 'quant.bits'; did you mean")):
        plan.plan_sweep("configs/demo.py", "runs/x", [Point("p", {"quant.bits": 2})])
    with pytest.raises(grid.SweepError, match="point name 'teacher' is reserved"):
        plan.plan_sweep("configs/demo.py", "runs/x", [Point("teacher", {})])


def test_a_second_sweep_in_the_same_directory_is_refused(tmp_path):
    wd = tmp_path / "a{b}"  # braces too: the message goes through str.format
    planned = plan.plan_sweep("configs/demo.py", str(wd), [Point("p", {"student.layers": "3-1"})])
    with (
        workdir_lock.hold(str(wd / ".sweep.lock"), "held"),
        pytest.raises(
            grid.SweepError,
            match=f"^another sweep is running in {re.escape(str(wd))}; wait for it or use another --workdir.$",
        ),
    ):
        runner.run_plan(planned)
    assert not (wd / "sweep.json").exists()


def test_print_commands_exact_lines(capsys, tmp_path):
    wd = str(tmp_path / "s")
    code, out, err = _main(
        capsys,
        "--config",
        "configs/demo.py",
        "--workdir",
        wd,
        "--set",
        "train.steps=4",
        "--grid",
        "distill.weights=(1,1);(0.8,3)",
        "--grid",
        "student.layers=3-1",
        "--print-commands",
    )
    assert code == 0, err
    teacher = (
        f"--config.teacher.path={wd}/teacher/teacher_hf --config.teacher.scratch= --config.teacher.tokenizer= "
        "--config.teacher.finetune=False"
    )
    assert out.splitlines() == [
        f"{PY} -m train.main --config configs/demo.py --workdir {wd}/teacher --config.train.steps=4 "
        "--config.stages=teacher",
        f"{PY} -m train.main --config configs/demo.py --workdir {wd}/weights1-1_layers3-1 --config.train.steps=4 "
        f"'--config.distill.weights=(1,1)' --config.student.layers=3-1 {teacher}",
        f"{PY} -m train.main --config configs/demo.py --workdir {wd}/weights0.8-3_layers3-1 --config.train.steps=4 "
        f"'--config.distill.weights=(0.8,3)' --config.student.layers=3-1 {teacher}",
        f"{PY} -m train.sweep --workdir {wd} --report",
    ]
    argv = shlex.split(out.splitlines()[2])
    assert argv[:3] == [PY, "-m", "train.main"] and "--config.distill.weights=(0.8,3)" in argv
    recorded = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [p["name"] for p in recorded["points"]] == ["weights1-1_layers3-1", "weights0.8-3_layers3-1"]
    assert recorded["points"][1]["command"] == out.splitlines()[2]
    assert recorded["points"][1]["summary"] == {
        "wea": "2-2-8",
        "method": "dq_bart",
        "distill": "DQ",
        "layers": "3-1",
        "metric": "rougeLsum",
    }
    # a grid over teacher/data/seed keys: one teacher per setting, shared by the points that have it
    code, out, _ = _main(
        capsys,
        "--config",
        "configs/demo.py",
        "--workdir",
        str(tmp_path / "t"),
        "--grid",
        "seed=0,1",
        "--grid",
        "quant.act_bits=8,0",
        "--print-commands",
    )
    lines = out.splitlines()
    assert [shlex.split(line)[6].rsplit("/", 1)[1] for line in lines[:-1]] == [
        "teacher_seed0",
        "teacher_seed1",
        "seed0_abits8",
        "seed0_abits32",
        "seed1_abits8",
        "seed1_abits32",
    ]
    assert f"--config.teacher.path={tmp_path}/t/teacher_seed1/teacher_hf" in lines[4]
    # a given teacher that is not fine-tuned: no teacher job
    code, out, _ = _main(
        capsys,
        "--config",
        "configs/demo.py",
        "--workdir",
        str(tmp_path / "u"),
        "--set",
        "teacher.path=/models/t",
        "--set",
        "teacher.finetune=False",
        "--grid",
        "student.layers=3-1",
        "--print-commands",
    )
    assert len(out.splitlines()) == 2 and "--config.teacher.path=/models/t" in out.splitlines()[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "configs/demo.py"], "error: --workdir is required (--help lists the flags)."),
        (
            ["--workdir", "w", "--grids", "seed=1"],
            "error: Unknown command line flag 'grids'. Did you mean: grid (--help lists the flags).",
        ),
        (
            ["--workdir", "w", "seed=1"],
            "error: unexpected arguments ['seed=1']: every argument is a --flag (--help lists them).",
        ),
    ],
)
def test_argument_mistakes_are_one_line_and_exit_2(capsys, tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        sweep.main(["train.sweep", *args])
    assert (e.value.code, capsys.readouterr().err) == (2, message + "\n")


def test_help_prints_the_syntax_and_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["train.sweep", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("Runs a grid of `train.main` jobs") and "\nSyntax\n" in out
    assert all(
        f"--{name}:" in out or f"--[no]{name}:" in out
        for name in ("config", "workdir", "grid", "set", "sweep", "print-commands", "report", "fail-fast")
    )
