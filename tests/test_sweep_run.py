"""Running train.sweep end to end: resuming, skipping finished points, failing jobs."""

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.sweep_helpers import PY, REPO, _results, _write, at_repo_root  # noqa: F401 - an autouse fixture: paths are repo-relative
from train.sweeps import report, runner
from train.sweeps.grid import Point

# ---------------------------------------------------------------- end to end

TINY = [
    "teacher.steps=4",
    "train.steps=4",
    "train.batch_size=8",
    "data.max_examples=32",
    "data.max_source_length=64",
    "data.max_target_length=16",
    "eval.max_examples=4",
    "eval.max_length=8",
    "eval.batch_size=8",
    "train.log_every=2",
    "train.eval_every=1000",
    "train.checkpoint_every=1000",
]


def _sweep_cli(*args) -> list[str]:
    return [PY, "-m", "train.sweep", "--config", "configs/demo.py", *[a for s in TINY for a in ("--set", s)], *args]


def _env(tmp_path: Path) -> dict:
    # One compilation cache for the sweep's jobs: programs they share (the teacher's) compile
    # once. The tiny jobs spend most of their time compiling: skip XLA's expensive passes.
    xla = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "HF_HUB_OFFLINE": "1",
        "XLA_FLAGS": xla.strip(),
    }


def _csv_rows(wd: Path) -> list[dict]:
    with open(wd / "sweep.csv") as f:
        return list(csv.DictReader(f))


def test_two_point_sweep_runs_once_then_skips_finished_points(tmp_path):
    wd = tmp_path / "s"
    cmd = _sweep_cli(
        "--workdir",
        str(wd),
        "--grid",
        "quant.weight_bits+quant.embed_bits=2,8",
        "--set",
        "student.layers=3-1",
        "--set",
        "stages=teacher,distill,eval",
    )
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    names = ["webits2", "webits8"]
    for n in ["teacher", *names]:
        assert (wd / n / "results.json").exists() and f"run  {n}" in first.stdout
    assert (wd / "webits8" / "teacher_hf" / "tokenizer.json").exists()
    for n in names:  # the points after the first read every split from the tokenization cache
        log = (wd / n / "run.log").read_text()
        assert not re.search(r": tokenized \d+ rows", log) and all(
            f"{split}: tokenization cache hit" in log for split in ("train", "validation", "test")
        ), log[-3000:]
    mtimes = {n: (wd / n / "results.json").stat().st_mtime_ns for n in ["teacher", *names]}

    again = subprocess.run(
        [PY, "-m", "train.sweep", "--workdir", str(wd)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    for n in ["teacher", *names]:
        assert f"skip {n}: finished" in again.stdout and f"run  {n}" not in again.stdout
        assert (wd / n / "results.json").stat().st_mtime_ns == mtimes[n]
    rows = _csv_rows(wd)
    assert [r["point"] for r in rows] == ["teacher", *names]
    assert [r["status"] for r in rows] == ["done"] * 3
    assert [r["wea_bits"] for r in rows] == ["32-32-32", "2-2-8", "8-8-8"]
    assert float(rows[1]["compression_ratio"]) > float(rows[2]["compression_ratio"]) > 1
    assert all(r["test_rougeLsum"] != "" and float(r["train_time_s"]) > 0 for r in rows)
    assert "| webits2 | done | 2-2-8 |" in (wd / "sweep.md").read_text()
    assert (wd / "tradeoff.png").stat().st_size > 10_000
    recorded = json.loads((wd / "sweep.json").read_text())
    assert recorded["runs"]["webits2"]["status"] == "done" and recorded["runs"]["webits2"]["attempts"] == 1


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_printed_commands_give_the_same_sweep(tmp_path):
    wd = tmp_path / "s"
    axes = ["--grid", "quant.weight_bits+quant.embed_bits=2,8", "--grid", "student.layers=3-3,3-2,3-1"]
    cmd = _sweep_cli("--workdir", str(wd), *axes)
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path)
    )
    first = wd / "webits2_layers3-3" / "results.json"
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert first.exists(), proc.communicate()[1][-3000:]
    time.sleep(8)  # the second point is running now
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "sweep stopped by SIGINT" in err
    finished = sorted(p.parent.name for p in wd.glob("*/results.json"))
    assert "webits2_layers3-3" in finished and len(finished) < 7
    mtime = first.stat().st_mtime_ns
    status = json.loads((wd / "sweep.json").read_text())["runs"]
    assert status["webits2_layers3-2"]["status"] in ("interrupted", "done")
    interrupted = status["webits2_layers3-2"]["status"] == "interrupted"

    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(tmp_path), timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skip webits2_layers3-3: finished" in resumed.stdout and first.stat().st_mtime_ns == mtime
    rows = _csv_rows(wd)
    points = [r["point"] for r in rows[1:]]
    assert len(points) == 6 and all(r["status"] == "done" for r in rows)
    runs = json.loads((wd / "sweep.json").read_text())["runs"]
    assert runs["webits2_layers3-3"]["attempts"] == 1  # finished before the signal: never run again
    assert runs["webits2_layers3-2"]["attempts"] == (2 if interrupted else 1)

    # the printed commands, run one by one, make the same sweep
    wd2 = tmp_path / "printed"
    printed = subprocess.run(
        _sweep_cli("--workdir", str(wd2), *axes, "--print-commands"),
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
    )
    lines = printed.stdout.splitlines()
    assert printed.returncode == 0 and len(lines) == 8 and not any(wd2.glob("*/results.json"))
    for line in lines:
        step = subprocess.run(
            shlex.split(line), cwd=REPO, capture_output=True, text=True, env=_env(tmp_path), timeout=900
        )
        assert step.returncode == 0, line + "\n" + step.stderr[-3000:]
    rows2 = _csv_rows(wd2)
    assert [r["point"] for r in rows2] == [r["point"] for r in rows]
    assert all(r["status"] == "done" for r in rows2)
    assert [r["compression_ratio"] for r in rows2] == [r["compression_ratio"] for r in rows]


def test_failing_points_are_reported_and_the_others_still_run(tmp_path):
    # a teacher that does not exist: every job fails within seconds, before any training
    base = [
        PY,
        "-m",
        "train.sweep",
        "--config",
        "configs/demo.py",
        "--set",
        f"teacher.path={tmp_path}/none",
        "--set",
        "teacher.finetune=False",
        "--set",
        "teacher.tokenizer=",
        "--set",
        "data.max_examples=8",
        "--grid",
        "student.layers=3-1,3-2",
    ]
    out = subprocess.run(
        [*base, "--workdir", str(tmp_path / "a")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert out.returncode == 1
    assert "error: 2 job(s) failed: layers3-1, layers3-2" in out.stderr
    assert "FAILED layers3-1 (exit 1); last lines of" in out.stdout and f"{tmp_path}/none" in out.stdout
    assert [(r["point"], r["status"]) for r in _csv_rows(tmp_path / "a")] == [
        ("teacher", "not run"),
        ("layers3-1", "failed (exit 1)"),
        ("layers3-2", "failed (exit 1)"),
    ]
    fast = subprocess.run(
        [*base, "--workdir", str(tmp_path / "b"), "--fail-fast"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert fast.returncode == 1 and "error: 1 job(s) failed: layers3-1" in fast.stderr
    assert "run  layers3-2" not in fast.stdout and not (tmp_path / "b" / "layers3-2").exists()


def test_run_sweep_from_python_skips_finished_points_without_starting_anything(tmp_path, capsys):
    points = [
        Point("dq228", {"quant.weight_bits": 2, "student.layers": "3-1"}),
        Point("fp", {"quant.weight_bits": 0, "quant.embed_bits": 0, "quant.act_bits": 0}),
    ]
    for p, ratio in zip(points, (11.6, 1.1)):
        _write(
            tmp_path / p.name / "results.json",
            _results(ratio, 6.04 / ratio, 6.1 / ratio, ratio, {"rougeLsum": 50.0}, {"rougeLsum": 52.0}),
        )
    assert runner.run_sweep("configs/demo.py", str(tmp_path), points, {"train.steps": 4}) == 0
    out = capsys.readouterr().out
    assert "skip dq228: finished" in out and "skip fp: finished" in out
    assert "skip teacher: every point that uses this teacher is finished" in out and "\nrun " not in out
    assert not (tmp_path / "teacher").exists()
    rows = report.write_report(str(tmp_path))
    assert [(r["point"], r["wea_bits"], r["status"]) for r in rows] == [
        ("teacher", "32-32-32", "not run"),
        ("dq228", "2-2-8", "done"),
        ("fp", "32-32-32", "done"),
    ]
    assert json.loads((tmp_path / "sweep.json").read_text())["points"][0]["overrides"] == {
        "quant.weight_bits": "2",
        "student.layers": "3-1",
    }
