"""Faults a long run must survive: damaged checkpoints, a second run, SIGTERM, a full disk, SIGKILL."""

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
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dq_jax.parallel import sharding
from dq_jax.training.checkpoint import CheckpointError, StageCheckpoints

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


LONG = (
    "--config.stages=teacher",
    "--config.teacher.steps=400",
    "--config.train.batch_size=8",
    "--config.train.checkpoint_every=50",
    "--config.train.eval_every=1000",
    "--config.train.log_every=5",
    "--config.data.max_examples=256",
    "--config.eval.max_examples=8",
    "--config.eval.max_length=8",
)


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

    resumed = subprocess.run(
        cmd[: -len(LONG)] + [*LONG[:1], f"--config.teacher.steps={stopped_at + 5}", *LONG[2:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in resumed.stderr
    steps = [
        json.loads(line)["step"] for line in metrics.read_text().splitlines() if json.loads(line)["split"] == "train"
    ]
    assert steps[-1] == stopped_at + 5


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs: room for two checkpoints of the demo teacher (about 17 MiB each), not three."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", str(mount)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("needs permission to mount a tmpfs (root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_disk_full_while_saving_is_named_and_earlier_checkpoints_survive(tmp_path, small_disk):
    work = tmp_path / "run"
    work.mkdir()
    (work / "checkpoints").symlink_to(small_disk)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.main",
            "--config",
            "configs/demo.py",
            "--workdir",
            str(work),
            "--config.stages=teacher",
            "--config.teacher.steps=40",
            "--config.train.batch_size=8",
            "--config.train.checkpoint_every=4",
            "--config.train.eval_every=1000",
            "--config.train.log_every=4",
            "--config.data.max_examples=256",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=600,
    )
    assert out.returncode != 0
    assert "Disk full while" in out.stderr and "Earlier checkpoints are intact" in out.stderr, out.stderr[-3000:]
    latest = small_disk / "teacher" / "latest"
    complete = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    assert complete and all((latest / str(s) / "_CHECKPOINT_METADATA").exists() for s in complete)
    ck = StageCheckpoints(str(small_disk / "teacher"))
    assert ck.latest_step() == complete[-1]
    restored = ck.latest.restore(ck.latest_step(), args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
    assert restored["extra"]["data"]["position"] > 0


RUN = (
    "--config.stages=teacher",
    "--config.teacher.steps=24",
    "--config.train.batch_size=8",
    "--config.train.checkpoint_every=1",
    "--config.train.eval_every=12",
    "--config.train.log_every=4",
    "--config.data.max_examples=256",
    "--config.eval.max_examples=8",
    "--config.eval.max_length=8",
)


def _demo(work: Path, wait=True):
    cmd = [sys.executable, "-m", "train.main", "--config", "configs/demo.py", "--workdir", str(work), *RUN]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if wait:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _teacher_weights(work: Path):
    from safetensors.numpy import load_file

    return load_file(str(work / "teacher_hf" / "model.safetensors"))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("straight")
    out = _demo(work)
    assert out.returncode == 0, out.stderr[-3000:]
    return _teacher_weights(work)


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.slow  # a demo run and a killed one; the default suite's SIGKILL-and-resume test is test_pipeline's
def test_sigkill_during_an_async_checkpoint_save(tmp_path, straight_run):
    work = tmp_path / "run"
    proc = _demo(work, wait=False)
    latest = work / "checkpoints" / "teacher" / "latest"
    caught = None
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if latest.is_dir():
            partial = [p.name for p in latest.iterdir() if "tmp" in p.name]
            if partial and any(p.name.isdigit() for p in latest.iterdir()):
                proc.kill()
                caught = partial
                break
        time.sleep(0.002)
    proc.wait()
    assert caught, "never saw a checkpoint being written; the run finished first"
    out = _demo(work)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step" in out.stderr
    _assert_same_weights(_teacher_weights(work), straight_run)


@pytest.mark.slow  # a demo run and a killed one; the default suite's SIGKILL-and-resume test is test_pipeline's
def test_checkpoint_damaged_by_hand_falls_back_and_finishes_like_an_uninterrupted_run(tmp_path, straight_run):
    work = tmp_path / "run"
    proc = _demo(work, wait=False)
    latest = work / "checkpoints" / "teacher" / "latest"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if latest.is_dir() and sum(p.name.isdigit() for p in latest.iterdir()) >= 2:
            proc.kill()
            break
        time.sleep(0.01)
    proc.wait()
    newest = max((p for p in latest.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    _truncate_largest_file(newest / "state")
    out = _demo(work)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Checkpoint step {newest.name} in {latest} is unreadable" in out.stderr
    assert "trying the one before it" in out.stderr and f"resumed from step {int(newest.name) - 1}" in out.stderr
    _assert_same_weights(_teacher_weights(work), straight_run)


@pytest.mark.slow
def test_soak_five_kills_at_random_points_end_like_an_uninterrupted_run(tmp_path, straight_run):
    import random

    rng = random.Random(0)
    work = tmp_path / "soak"
    for _ in range(5):
        proc = _demo(work, wait=False)
        time.sleep(rng.uniform(8.0, 20.0))  # JAX start-up and compilation take several seconds
        proc.kill()
        proc.wait()
    out = _demo(work)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_same_weights(_teacher_weights(work), straight_run)


def test_ctrl_c_and_sigterm_become_a_stop_request_between_steps():
    from dq_jax.utils.stop_signals import StopRequests

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in the background
    with StopRequests().installed() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt mid-step: the loop saves first
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert stop and stop.signum == signal.SIGINT and stop.name == "SIGINT"  # the first one counts
    assert signal.getsignal(signal.SIGINT) is before  # restored afterwards
