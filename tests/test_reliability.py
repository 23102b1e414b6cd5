"""Faults a long run must survive: damaged checkpoints, a second run, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from dq_jax import sharding
from dq_jax.checkpoint import CheckpointError, StageCheckpoints

REPO = Path(__file__).resolve().parents[1]


def _truncate_largest_file(directory: Path) -> Path:
    files = [p for p in directory.rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    sh = {"w": NamedSharding(mesh, P())}
    ck = StageCheckpoints(str(tmp_path / "ck"), async_save=False)
    for step in (1, 2):
        ck.save(step, {"w": jnp.full((256, 256), float(step))}, {"data": {"position": step}})
    ck.wait()
    _truncate_largest_file(tmp_path / "ck" / "latest" / "2" / "state")
    with caplog.at_level("WARNING"):
        state, extra = StageCheckpoints(str(tmp_path / "ck")).restore({"w": jnp.zeros((256, 256))}, sh)
    assert extra == {"data": {"position": 1}} and float(state["w"][0, 0]) == 1.0
    assert "Checkpoint step 2" in caplog.text and "unreadable" in caplog.text
    _truncate_largest_file(tmp_path / "ck" / "latest" / "1" / "state")
    with pytest.raises(CheckpointError, match=r"No readable checkpoint in .*latest.*step 2.*step 1"):
        StageCheckpoints(str(tmp_path / "ck")).restore({"w": jnp.zeros((256, 256))}, sh)


LONG = ("--config.stages=teacher", "--config.teacher.steps=400", "--config.train.batch_size=8",
        "--config.train.checkpoint_every=50", "--config.train.eval_every=1000", "--config.train.log_every=5",
        "--config.data.max_examples=256", "--config.eval.max_examples=8", "--config.eval.max_length=8")


def test_second_run_refuses_and_sigterm_saves_then_resumes(tmp_path):
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.main", "--config", "configs/demo.py", "--workdir", str(work), *LONG]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = work / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not metrics.exists():
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[1][-3000:]
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode != 0
    assert f"Another run is using {work} (pid {first.pid}" in second.stderr

    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM at step" in err and "Rerun the same command to resume" in err
    stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert (work / "checkpoints" / "teacher" / "latest" / str(stopped_at)).is_dir()
    assert stopped_at < 400

    resumed = subprocess.run(cmd[:-len(LONG)] + [*LONG[:1], f"--config.teacher.steps={stopped_at + 5}", *LONG[2:]],
                             cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in resumed.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps[-1] == stopped_at + 5
