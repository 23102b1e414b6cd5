"""Faults a long run must survive: damaged checkpoints, a second run, SIGTERM."""

import json
import os
import re
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
from jax.sharding import NamedSharding, PartitionSpec as P

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


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs: room for two checkpoints of the demo teacher (about 17 MiB each), not three."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a tmpfs (root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_disk_full_while_saving_is_named_and_earlier_checkpoints_survive(tmp_path, small_disk):
    work = tmp_path / "run"
    work.mkdir()
    (work / "checkpoints").symlink_to(small_disk)
    out = subprocess.run(
        [sys.executable, "-m", "train.main", "--config", "configs/demo.py", "--workdir", str(work),
         "--config.stages=teacher", "--config.teacher.steps=40", "--config.train.batch_size=8",
         "--config.train.checkpoint_every=4", "--config.train.eval_every=1000", "--config.train.log_every=4",
         "--config.data.max_examples=256"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert out.returncode != 0
    assert "Disk full while" in out.stderr and "Earlier checkpoints are intact" in out.stderr, out.stderr[-3000:]
    latest = small_disk / "teacher" / "latest"
    complete = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    assert complete and all((latest / str(s) / "_CHECKPOINT_METADATA").exists() for s in complete)
    ck = StageCheckpoints(str(small_disk / "teacher"))
    assert ck.latest_step() == complete[-1]
    restored = ck.latest.restore(ck.latest_step(), args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
    assert restored["extra"]["data"]["position"] > 0


@pytest.fixture(scope="module")
def xsum_setup(shared_data, tmp_path_factory):
    """Local XSum files and a small random BART teacher with the real tokenizer beside it."""
    import transformers
    d = tmp_path_factory.mktemp("xsum_setup")
    rows = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:48]]
    for split, part in (("train", rows[:32]), ("validation", rows[32:40]), ("test", rows[40:48])):
        (d / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in part) + "\n")
    (d / "empty.jsonl").write_text("")
    (d / "latin1.jsonl").write_bytes('{"document": "caf\xe9", "summary": "x"}\n'.encode("latin-1"))
    teacher = d / "teacher"
    cfg = transformers.BartConfig(vocab_size=50265, d_model=16, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                  decoder_ffn_dim=32, max_position_embeddings=256)
    transformers.BartForConditionalGeneration(cfg).save_pretrained(teacher)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (teacher / name).write_bytes((shared_data / "tokenizers" / "bart-base_roberta-base" / name).read_bytes())
    return d


def _xsum_cli(setup: Path, work: Path, *overrides, devices: int = 1):
    base = [f"--config.teacher.path={setup / 'teacher'}", "--config.data.name=",
            f"--config.data.train_files={setup / 'train.jsonl'}",
            f"--config.data.validation_files={setup / 'validation.jsonl'}",
            f"--config.data.test_files={setup / 'test.jsonl'}", "--config.teacher.finetune=False",
            "--config.stages=distill", "--config.train.steps=2", "--config.data.max_source_length=64"]
    return subprocess.run([sys.executable, "-m", "train.main", "--config", "configs/xsum.py:layers=2-1",
                           "--workdir", str(work), *base, *overrides], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1",
                                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"), timeout=300)


BAD_INPUT = {
    "bits": (["--config.quant.weight_bits=9"], "quant.weight_bits=9 is not supported by quant.method='dq_bart'"),
    "method": (["--config.quant.method=int4"], "quant.method='int4' is not supported"),
    "act_bits": (["--config.quant.act_bits=1"], "quant.act_bits=1 has no activation quantizer"),
    "layer_map": (["--config.student.encoder_map=0,7"], "encoder layer map (0, 7) has index 7"),
    "missing_file": (["--config.data.test_files=/nonexistent/test.jsonl"], "/nonexistent/test.jsonl does not exist"),
    "missing_column": (["--config.data.source_column=article"], "Column 'article' not found"),
    "empty_split": (["--config.data.test_files={d}/empty.jsonl"], "The test split ({d}/empty.jsonl) is empty"),
    "non_utf8": (["--config.data.validation_files={d}/latin1.jsonl"], "latin1.jsonl is not valid UTF-8"),
    "batch": (["--config.train.batch_size=6", "--config.mesh=(4,1,1)"],
              "batch size 6 does not divide over the 4 data-parallel devices"),
    "mesh": (["--config.mesh=(4,4,1)"], "needs 16 devices but only"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_clear_error_before_training(xsum_setup, tmp_path, case):
    overrides, message = (x.replace("{d}", str(xsum_setup)) if isinstance(x, str) else
                          [o.replace("{d}", str(xsum_setup)) for o in x] for x in BAD_INPUT[case])
    env_devices = ["--config.mesh=(1,1,1)"] if case not in ("batch", "mesh") else []
    out = _xsum_cli(xsum_setup, tmp_path / "w", *env_devices, *overrides, devices=4 if case == "batch" else 1)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_teacher_and_tokenizer_problems_name_what_was_found(xsum_setup, tmp_path):
    not_bart = tmp_path / "t5"
    not_bart.mkdir()
    (not_bart / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 100, "d_model": 8}))
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (not_bart / name).write_bytes((xsum_setup / "teacher" / name).read_bytes())
    out = _xsum_cli(xsum_setup, tmp_path / "a", f"--config.teacher.path={not_bart}")
    assert out.returncode != 0 and "model_type='t5'" in out.stderr and "BART or mBART" in out.stderr
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((xsum_setup / "teacher" / name).read_bytes())
    out = _xsum_cli(xsum_setup, tmp_path / "b", f"--config.teacher.path={no_tok}")
    assert out.returncode != 0 and f"No tokenizer in {no_tok}" in out.stderr
    small = tmp_path / "small_vocab"
    small.mkdir()
    cfg = json.loads((xsum_setup / "teacher" / "config.json").read_text())
    import transformers
    transformers.BartForConditionalGeneration(transformers.BartConfig(**dict(
        {k: cfg[k] for k in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                             "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
                             "max_position_embeddings")}, vocab_size=1000))).save_pretrained(small)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (small / name).write_bytes((xsum_setup / "teacher" / name).read_bytes())
    out = _xsum_cli(xsum_setup, tmp_path / "c", f"--config.teacher.path={small}")
    assert out.returncode != 0 and re.search(r"The tokenizer \(.*\) has 50265 tokens but the teacher", out.stderr)
    assert "vocab_size 1000" in out.stderr


RUN = ("--config.stages=teacher", "--config.teacher.steps=24", "--config.train.batch_size=8",
       "--config.train.checkpoint_every=1", "--config.train.eval_every=12", "--config.train.log_every=4",
       "--config.data.max_examples=256", "--config.eval.max_examples=8", "--config.eval.max_length=8")


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
