"""Multi-process training on JAX's distributed runtime: two local processes (gloo CPU
collectives, 4 simulated devices each) against one process with all 8 devices."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dq_jax.model.hf_layout import flatten
from dq_jax.parallel import sharding
from dq_jax.training import train_step
from dq_jax.training.checkpoint import StageCheckpoints
from tests import dist_worker

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, *extra: str, timeout: float = 600):
    out.mkdir(parents=True, exist_ok=True)
    port = str(_free_port())
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.dist_worker", str(out), str(i), "2", port, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        for i in range(2)
    ]
    t0 = time.monotonic()
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outs, time.monotonic() - t0


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    codes, logs, _ = _launch(out)
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    return out


def test_two_processes_equal_one_process_on_the_same_mesh(two_process_run):
    result = np.load(two_process_run / "result.npz")
    state, losses, _, _ = dist_worker.run()  # one process, the same (2, 2, 2) mesh over 8 devices
    assert len(losses) == 3 and all(np.isfinite(losses))
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-5)
    ref = {"/".join(k): v for k, v in flatten(jax.device_get(state.params))}
    assert set(ref) == set(result.files) - {"losses"}
    worst = max(_rel(result[k], v) for k, v in ref.items())
    print(f"largest relative parameter difference, 2 processes vs 1: {worst:.2e}")
    assert worst <= 1e-5


def test_two_process_checkpoint_continues_in_one_process_on_another_mesh(two_process_run):
    mesh_shape = (1, 2, 4)
    step_fn, mesh, fresh, st_sh, teacher = dist_worker.setup(mesh_shape)
    ckpts = StageCheckpoints(str(two_process_run / "checkpoints"))
    state, extra = ckpts.restore(fresh, st_sh)
    ckpts.close()
    assert int(state.step) == 3 and extra["data"] == {"epoch": 0, "position": 3}
    emb = state.params["shared"]["embedding"]
    assert emb.sharding.mesh.shape_tuple == (("data", 1), ("fsdp", 2), ("tensor", 4))
    state, metrics = step_fn(state, teacher, train_step.shard_batch(dist_worker.global_batch(3), mesh))
    # the uninterrupted single-process run's 4th step
    _, ref_losses, _, _ = dist_worker.run(steps=4)
    np.testing.assert_allclose(float(metrics["loss"]), ref_losses[3], rtol=1e-5)
    assert int(state.step) == 4


def test_process_rows_split_the_batch_by_process():
    # one process holds every row
    assert sharding.process_rows(sharding.make_mesh((2, 2, 2)), 8).tolist() == list(range(8))


@pytest.mark.slow
def test_a_dead_process_stops_the_others_within_the_heartbeat_timeout(tmp_path):
    codes, logs, _elapsed = _launch(tmp_path, "--die-after", "1", timeout=300)
    assert codes[1] == 3  # the one that crashed
    assert codes[0] != 0, logs[0][-2000:]
    assert "another task died" in logs[0], logs[0][-2000:]


def test_distributed_config_reads_the_environment_and_checks_it():
    from configs import demo
    from train.settings import distributed_from_config

    def settings(environ, **section):
        c = demo.get_config()
        c.distributed.update(section)
        return distributed_from_config(c, environ)

    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    c = settings(env)
    assert (c.coordinator_address, c.num_processes, c.process_id, c.enabled) == ("10.0.0.1:1234", 4, 3, True)
    # the config wins over the environment
    assert settings(env, num_processes=2, process_id=1).num_processes == 2
    assert not settings({}).enabled
    with pytest.raises(ValueError, match=r"process_id=4 .* must be in 0\.\.3"):
        settings({}, coordinator_address="h:1", num_processes=4, process_id=4)
    with pytest.raises(ValueError, match=r"needs distributed\.num_processes"):
        settings({}, coordinator_address="h:1")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='x' must be an integer"):
        settings({"JAX_PROCESS_ID": "x"})
    assert settings({}, auto=True).enabled  # Slurm / Open MPI / TPU detect the rest


@pytest.mark.slow
def test_the_main_job_runs_in_two_processes(tmp_path):
    """train.main on the demo config with a TBT W2A2 student in two processes: one workdir,
    results and exports from process 0."""
    port = str(_free_port())
    work = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", HF_HUB_OFFLINE="1")
    cmd = lambda i: [
        sys.executable,
        "-m",
        "train.main",
        "--config",
        "configs/demo.py:tbt=W2A2",
        "--workdir",
        str(work),
        "--config.mesh=(2,2,2)",
        "--config.teacher.steps=4",
        "--config.train.steps=4",
        "--config.train.eval_every=2",
        "--config.eval.max_examples=16",
        "--config.data.max_examples=128",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={i}",
    ]
    procs = [
        subprocess.Popen(
            cmd(i),
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:]
    results = json.loads((work / "results.json").read_text())
    assert "rougeLsum" in results["student_test"] and results["export"]["packed"]["bytes"] > 0
    meta = json.loads((work / "student_hf" / "dq_jax.json").read_text())
    assert len(meta["elastic"]) > 0  # the learned step sizes made it out of the sharded state
    assert (work / "run.process1.log").exists() and "results:" in logs[0] and "results:" not in logs[1]
