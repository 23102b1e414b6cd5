"""train.sweep's report (tables, Pareto front, plot) and running sweeps end to end: resuming,
skipping finished points, failing jobs."""

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

from tests.sweep_helpers import PY, REPO, at_repo_root  # noqa: F401 - an autouse fixture: paths are repo-relative
from train.sweeps import plot, report, runner
from train.sweeps.grid import Point

# ---------------------------------------------------------------- the report

def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _results(ratio, mib, packed, packed_ratio, test, teacher_test, dev=None, teacher_mib=532.0):
    r = {"size": {"convention": "paper", "teacher_mib": teacher_mib, "student_mib": mib, "compression_ratio": ratio,
                  "packed_student_mib": packed, "packed_compression_ratio": packed_ratio},
         "student_test": test, "teacher_test": teacher_test, "config": {}}
    if dev is not None:
        r["student_dev"] = {"rougeLsum": dev, "step": 10}
    return r


def _summary(wea, layers, distill="DQ"):
    return {"wea": wea, "method": "dq_bart", "distill": distill, "layers": layers, "metric": "rougeLsum"}


def _make_sweep(wd: Path, points: list[dict], runs: dict) -> None:
    """sweep.json plus results.json for points that have `results`."""
    _write(wd / "sweep.json", {
        "config": "configs/xsum.py", "sets": {"train.epochs": "3"},
        "teachers": [{"name": "teacher", "overrides": {"stages": "teacher"}, "command": "..."}],
        "points": [{"name": p["name"], "overrides": {}, "teacher": "teacher", "summary": p["summary"],
                    "command": "..."} for p in points],
        "runs": runs})
    for p in points:
        if p.get("results"):
            _write(wd / p["name"] / "results.json", p["results"])


TT = {"rouge1": 42.5, "rouge2": 19.25, "rougeL": 34.5, "rougeLsum": 34.75}


def test_report_tables_are_exact(tmp_path):
    wd = tmp_path / "s"
    _make_sweep(wd, [
        {"name": "webits2_layers6-6", "summary": _summary("2-2-8", "6-6"),
         "results": _results(13.4343, 39.6, 187.0, 2.845, {"rouge1": 40.125, "rouge2": 17.5, "rougeL": 32.25,
                                                            "rougeLsum": 32.5}, TT, dev=33.0)},
        {"name": "webits8_layers6-6", "summary": _summary("8-8-8", "6-6")},
        {"name": "webits2_layers6-3", "summary": _summary("2-2-8", "6-3", "quant-only"),
         "results": _results(16.0, 33.25, 180.5, 2.9473, {"rouge1": 38.0, "rouge2": 16.0, "rougeL": 30.0,
                                                          "rougeLsum": 30.5}, TT)},
        {"name": "webits2_layers6-1", "summary": _summary("2-2-8", "6-1")},
    ], runs={"teacher": {"status": "done", "seconds": 100.04},
             "webits2_layers6-6": {"status": "done", "seconds": 50.25},
             "webits8_layers6-6": {"status": "failed", "returncode": 1, "seconds": 3.5},
             "webits2_layers6-3": {"status": "done", "seconds": 40.0}})
    _write(wd / "teacher" / "results.json", {"teacher_dev": {"rougeLsum": 36.5, "step": 100}})
    _write(wd / "teacher" / "teacher_hf" / "config.json", {"encoder_layers": 6, "decoder_layers": 6})
    # results.json has no student_dev when the distill stage finished in an earlier invocation
    _write(wd / "webits2_layers6-3" / "metrics.jsonl", "\n".join(json.dumps(r) for r in [
        {"stage": "distill", "split": "dev", "step": 5, "rougeLsum": 30.0},
        {"stage": "distill", "split": "train", "step": 5, "loss": 1.0},
        {"stage": "distill", "split": "dev", "step": 10, "rougeLsum": 31.5}]) + "\n")

    rows = report.write_report(str(wd))
    assert [r["point"] for r in rows] == ["teacher", "webits2_layers6-6", "webits8_layers6-6", "webits2_layers6-3",
                                          "webits2_layers6-1"]
    assert (wd / "sweep.csv").read_text().splitlines() == [
        "point,status,wea_bits,method,distill,layers,size_mib,compression_ratio,packed_mib,packed_compression_ratio,"
        "dev_rougeLsum,test_rouge1,test_rouge2,test_rougeL,test_rougeLsum,train_time_s",
        "teacher,done,32-32-32,-,teacher,6-6,532.0000,1.0000,532.0000,1.0000,36.5000,42.5000,19.2500,34.5000,"
        "34.7500,100.0",
        "webits2_layers6-6,done,2-2-8,dq_bart,DQ,6-6,39.6000,13.4343,187.0000,2.8450,33.0000,40.1250,17.5000,"
        "32.2500,32.5000,50.2",
        "webits8_layers6-6,failed (exit 1),8-8-8,dq_bart,DQ,6-6,,,,,,,,,,3.5",
        "webits2_layers6-3,done,2-2-8,dq_bart,quant-only,6-3,33.2500,16.0000,180.5000,2.9473,31.5000,38.0000,"
        "16.0000,30.0000,30.5000,40.0",
        "webits2_layers6-1,not run,2-2-8,dq_bart,DQ,6-1,,,,,,,,,,"]
    with open(wd / "sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == 5
    md = (wd / "sweep.md").read_text().splitlines()
    assert md[:3] == ["# Sweep s", "", "`--config configs/xsum.py` `--set train.epochs=3`"]
    assert md[4:11] == [
        "| point | status | W-E-A | method | distill | E-D | MiB (paper) | ratio (paper) | MiB (packed) | "
        "ratio (packed) | dev rougeLsum | test rouge1 | test rouge2 | test rougeL | test rougeLsum | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| teacher | done | 32-32-32 | - | teacher | 6-6 | 532.00 | 1.0x | 532.00 | 1.0x | 36.50 | 42.50 | 19.25 | "
        "34.50 | 34.75 | 100 |",
        "| webits2_layers6-6 | done | 2-2-8 | dq_bart | DQ | 6-6 | 39.60 | 13.4x | 187.00 | 2.8x | 33.00 | 40.12 | "
        "17.50 | 32.25 | 32.50 | 50 |",
        "| webits8_layers6-6 | failed (exit 1) | 8-8-8 | dq_bart | DQ | 6-6 | - | - | - | - | - | - | - | - | - | 4 |",
        "| webits2_layers6-3 | done | 2-2-8 | dq_bart | quant-only | 6-3 | 33.25 | 16.0x | 180.50 | 2.9x | 31.50 | "
        "38.00 | 16.00 | 30.00 | 30.50 | 40 |",
        "| webits2_layers6-1 | not run | 2-2-8 | dq_bart | DQ | 6-1 | - | - | - | - | - | - | - | - | - | - |"]
    assert (wd / "tradeoff.png").stat().st_size > 20_000


def test_pareto_front_membership():
    xy = [(3.8, 35.2),   # 0 front: best metric overall
          (4.6, 33.9),   # 1 dominated by 2 (more compression and a better metric)
          (13.4, 34.0),  # 2 front
          (13.4, 33.0),  # 3 dominated by 2 (same ratio, lower metric)
          (16.0, 32.8),  # 4 front
          (18.7, 29.5),  # 5 front: most compression
          (10.0, 30.0),  # 6 dominated by 2 and 4
          (16.0, 32.8)]  # 7 a tie with 4: both on the front
    assert plot.pareto_front(xy) == [0, 2, 4, 7, 5]
    assert plot.pareto_front([]) == [] and plot.pareto_front([(2.0, 1.0)]) == [0]


XSUM_LIKE = [  # (name, W-E-A, E-D, ratio, MiB, rougeLsum)
    ("webits8_layers6-6", "8-8-8", "6-6", 3.85, 138.1, 35.32),
    ("webits8_layers6-3", "8-8-8", "6-3", 4.62, 115.2, 33.91),
    ("webits8_layers6-1", "8-8-8", "6-1", 5.31, 100.2, 30.54),
    ("webits4_layers6-6", "4-4-8", "6-6", 7.33, 72.6, 35.01),
    ("webits2_layers6-6", "2-2-8", "6-6", 13.43, 39.6, 34.02),
    ("webits2_layers6-3", "2-2-8", "6-3", 16.01, 33.2, 32.84),
    ("webits2_layers6-2", "2-2-8", "6-2", 17.28, 30.8, 31.62),
    ("webits2_layers6-1", "2-2-8", "6-1", 18.73, 28.4, 29.48),
]


def make_xsum_like_sweep(wd: Path) -> None:
    """A realistic-looking synthetic BART-base XSum sweep (paper-convention sizes)."""
    tt = {"rouge1": 42.13, "rouge2": 19.24, "rougeL": 34.21, "rougeLsum": 34.86}
    points = [{"name": n, "summary": _summary(w, l),
               "results": _results(r, mib, mib * 1.3 + 147, 532 / (mib * 1.3 + 147),
                                   {"rouge1": m + 7.1, "rouge2": m - 15.9, "rougeL": m - 0.6, "rougeLsum": m}, tt,
                                   dev=m + 0.4)} for n, w, l, r, mib, m in XSUM_LIKE]
    runs = {n: {"status": "done", "seconds": 3600 * (1 + mib / 140)} for n, _, _, _, mib, _ in XSUM_LIKE}
    _make_sweep(wd, points, runs={"teacher": {"status": "done", "seconds": 9000.0}, **runs})
    _write(wd / "teacher" / "results.json", {"teacher_dev": {"rougeLsum": 35.31, "step": 20000}})
    _write(wd / "teacher" / "teacher_hf" / "config.json", {"encoder_layers": 6, "decoder_layers": 6})


def test_report_plot_of_a_realistic_sweep(tmp_path):
    make_xsum_like_sweep(tmp_path)
    rows = report.write_report(str(tmp_path))
    assert len(rows) == 9 and (tmp_path / "tradeoff.png").stat().st_size > 40_000
    xy = [(r["compression_ratio"], r["test_rougeLsum"]) for r in rows[1:]]
    assert [rows[1 + i]["point"] for i in plot.pareto_front(xy)] == [
        "webits8_layers6-6", "webits4_layers6-6", "webits2_layers6-6", "webits2_layers6-3", "webits2_layers6-2",
        "webits2_layers6-1"]


# ---------------------------------------------------------------- end to end

TINY = ["teacher.steps=4", "train.steps=4", "train.batch_size=8", "data.max_examples=32", "data.max_source_length=64",
        "data.max_target_length=16", "eval.max_examples=4", "eval.max_length=8", "eval.batch_size=8",
        "train.log_every=2", "train.eval_every=1000", "train.checkpoint_every=1000"]


def _sweep_cli(*args) -> list[str]:
    return [PY, "-m", "train.sweep", "--config", "configs/demo.py", *[a for s in TINY for a in ("--set", s)], *args]


def _env(tmp_path: Path) -> dict:
    # One compilation cache for the sweep's jobs: programs they share (the teacher's) compile
    # once. The tiny jobs spend most of their time compiling: skip XLA's expensive passes.
    xla = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
           " --xla_llvm_disable_expensive_passes=true")
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "HF_HUB_OFFLINE": "1", "XLA_FLAGS": xla.strip()}


def _csv_rows(wd: Path) -> list[dict]:
    with open(wd / "sweep.csv") as f:
        return list(csv.DictReader(f))


def test_two_point_sweep_runs_once_then_skips_finished_points(tmp_path):
    wd = tmp_path / "s"
    cmd = _sweep_cli("--workdir", str(wd), "--grid", "quant.weight_bits+quant.embed_bits=2,8",
                     "--set", "student.layers=3-1", "--set", "stages=teacher,distill,eval")
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    names = ["webits2", "webits8"]
    for n in ["teacher", *names]:
        assert (wd / n / "results.json").exists() and f"run  {n}" in first.stdout
    assert (wd / "webits8" / "teacher_hf" / "tokenizer.json").exists()
    for n in names:  # the points after the first read every split from the tokenization cache
        log = (wd / n / "run.log").read_text()
        assert not re.search(r": tokenized \d+ rows", log) and all(f"{split}: tokenization cache hit" in log
                                              for split in ("train", "validation", "test")), log[-3000:]
    mtimes = {n: (wd / n / "results.json").stat().st_mtime_ns for n in ["teacher", *names]}

    again = subprocess.run([PY, "-m", "train.sweep", "--workdir", str(wd)], cwd=REPO, capture_output=True, text=True,
                           env=_env(tmp_path), timeout=120)
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
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    first = wd / "webits2_layers3-3" / "results.json"
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert first.exists(), proc.communicate()[1][-3000:]
    time.sleep(8)  # the second point is running now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
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
    printed = subprocess.run(_sweep_cli("--workdir", str(wd2), *axes, "--print-commands"), cwd=REPO,
                             capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    lines = printed.stdout.splitlines()
    assert printed.returncode == 0 and len(lines) == 8 and not any(wd2.glob("*/results.json"))
    for line in lines:
        step = subprocess.run(shlex.split(line), cwd=REPO, capture_output=True, text=True, env=_env(tmp_path),
                              timeout=900)
        assert step.returncode == 0, line + "\n" + step.stderr[-3000:]
    rows2 = _csv_rows(wd2)
    assert [r["point"] for r in rows2] == [r["point"] for r in rows]
    assert all(r["status"] == "done" for r in rows2)
    assert [r["compression_ratio"] for r in rows2] == [r["compression_ratio"] for r in rows]


def test_failing_points_are_reported_and_the_others_still_run(tmp_path):
    # a teacher that does not exist: every job fails within seconds, before any training
    base = [PY, "-m", "train.sweep", "--config", "configs/demo.py", "--set", f"teacher.path={tmp_path}/none",
            "--set", "teacher.finetune=False", "--set", "teacher.tokenizer=", "--set", "data.max_examples=8",
            "--grid", "student.layers=3-1,3-2"]
    out = subprocess.run([*base, "--workdir", str(tmp_path / "a")], cwd=REPO, capture_output=True, text=True,
                         env=_env(tmp_path), timeout=300)
    assert out.returncode == 1
    assert "error: 2 job(s) failed: layers3-1, layers3-2" in out.stderr
    assert "FAILED layers3-1 (exit 1); last lines of" in out.stdout and f"{tmp_path}/none" in out.stdout
    assert [(r["point"], r["status"]) for r in _csv_rows(tmp_path / "a")] == [
        ("teacher", "not run"), ("layers3-1", "failed (exit 1)"), ("layers3-2", "failed (exit 1)")]
    fast = subprocess.run([*base, "--workdir", str(tmp_path / "b"), "--fail-fast"], cwd=REPO, capture_output=True,
                          text=True, env=_env(tmp_path), timeout=300)
    assert fast.returncode == 1 and "error: 1 job(s) failed: layers3-1" in fast.stderr
    assert "run  layers3-2" not in fast.stdout and not (tmp_path / "b" / "layers3-2").exists()


def test_run_sweep_from_python_skips_finished_points_without_starting_anything(tmp_path, capsys):
    points = [Point("dq228", {"quant.weight_bits": 2, "student.layers": "3-1"}),
              Point("fp", {"quant.weight_bits": 0, "quant.embed_bits": 0, "quant.act_bits": 0})]
    for p, ratio in zip(points, (11.6, 1.1)):
        _write(tmp_path / p.name / "results.json", _results(ratio, 6.04 / ratio, 6.1 / ratio, ratio,
                                                           {"rougeLsum": 50.0}, {"rougeLsum": 52.0}))
    assert runner.run_sweep("configs/demo.py", str(tmp_path), points, {"train.steps": 4}) == 0
    out = capsys.readouterr().out
    assert "skip dq228: finished" in out and "skip fp: finished" in out
    assert "skip teacher: every point that uses this teacher is finished" in out and "\nrun " not in out
    assert not (tmp_path / "teacher").exists()
    rows = report.write_report(str(tmp_path))
    assert [(r["point"], r["wea_bits"], r["status"]) for r in rows] == [
        ("teacher", "32-32-32", "not run"), ("dq228", "2-2-8", "done"), ("fp", "32-32-32", "done")]
    assert json.loads((tmp_path / "sweep.json").read_text())["points"][0]["overrides"] == {
        "quant.weight_bits": "2", "student.layers": "3-1"}
