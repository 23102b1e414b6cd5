"""What a person watching a run sees: metrics.jsonl, TensorBoard events, W&B files and profiler
traces; a killed and resumed run logs each step once and ends with the same results.json."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dq_jax.training import trainer
from dq_jax.training.metrics_log import MetricsLog, Record

REPO = Path(__file__).resolve().parents[1]


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = _events(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _records(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


def _train(stage: str, step: int, loss: float) -> Record:
    return Record(stage, "train", {"loss": loss, "mfu": 0.25}, step=step)


def test_a_resumed_stage_logs_each_step_once_in_jsonl_and_tensorboard(tmp_path):
    first = MetricsLog(str(tmp_path), config_json='{"seed": 0}')
    for step in (1, 2, 3):
        first.write(_train("teacher", step, 10.0 + step))
    for step in range(1, 7):  # the killed run got to step 6; its checkpoint is step 4
        first.write(_train("distill", step, float(step)))
    first.write(Record("distill", "dev", {"rougeLsum": 40.0}, step=6))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"stage": "distill", "split": "tr')  # SIGKILL in the middle of a line
    # no close(): killed; every record was on disk when write() returned

    second = MetricsLog(str(tmp_path), config_json='{"seed": 1}')
    second.resume("distill", 4)
    for step in (5, 6, 7):
        second.write(_train("distill", step, 100.0 + step))
    second.write(Record("distill", "dev", {"rougeLsum": 50.0}, step=6))
    second.close()

    records = _records(tmp_path)
    assert [(r["stage"], r["step"], r["loss"]) for r in records if r["split"] == "train"] == [
        ("teacher", 1, 11.0),
        ("teacher", 2, 12.0),
        ("teacher", 3, 13.0),
        ("distill", 1, 1.0),
        ("distill", 2, 2.0),
        ("distill", 3, 3.0),
        ("distill", 4, 4.0),
        ("distill", 5, 105.0),
        ("distill", 6, 106.0),
        ("distill", 7, 107.0),
    ]
    assert [r["rougeLsum"] for r in records if r["split"] == "dev"] == [50.0]
    distill = _scalars(tmp_path / "tensorboard" / "distill")
    assert distill["distill/train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 105.0), (6, 106.0), (7, 107.0)]
    assert distill["distill/dev/rougeLsum"] == [(6, 50.0)]
    assert [s for s, _ in distill["distill/train/mfu"]] == list(range(1, 8))
    assert _scalars(tmp_path / "tensorboard" / "teacher")["teacher/train/loss"] == [(1, 11.0), (2, 12.0), (3, 13.0)]
    config = _events(tmp_path / "tensorboard").Tensors("config/text_summary")
    assert len(config) == 1 and b'"seed": 1' in config[0].tensor_proto.string_val[0]


def test_an_evaluation_run_again_replaces_its_test_scores(tmp_path):
    for score in (1.0, 2.0):
        log = MetricsLog(str(tmp_path))
        log.restart("eval")
        log.write(Record("eval", "test", {"rougeLsum": score}, model="student"))
        log.write(Record("eval", "test", {"rougeLsum": score + 10}, model="teacher"))
        log.close()
    assert [(r["model"], r["rougeLsum"]) for r in _records(tmp_path)] == [("student", 2.0), ("teacher", 12.0)]
    scalars = _scalars(tmp_path / "tensorboard" / "eval")
    assert scalars == {"distill/test/rougeLsum": [(0, 2.0)], "teacher/test/rougeLsum": [(0, 12.0)]}


def test_only_the_main_process_writes(tmp_path):
    log = MetricsLog(str(tmp_path), enabled=False, wandb_project="never-started")
    log.resume("distill", 0)
    log.write(_train("distill", 1, 1.0))
    log.close()
    assert os.listdir(tmp_path) == []


def test_wandb_offline_writes_its_local_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb_dir").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    log = MetricsLog(str(work), config_json='{"quant": {"weight_bits": 2}}', wandb_project="dq-jax-test")
    log.resume("distill", 0)
    for step in (1, 2):
        log.write(_train("distill", step, float(step)))
    log.write(Record("distill", "dev", {"rougeLsum": 40.0}, step=2))
    log.close()
    import wandb

    wandb.teardown()  # the service writes the run file as it shuts down (at exit in a job)
    run_id = (work / "wandb_run_id").read_text().strip()
    runs = list((tmp_path / "wandb_dir" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob(f"run-{run_id}.wandb")), os.listdir(tmp_path / "wandb_dir")
    records = (runs[0] / f"run-{run_id}.wandb").read_bytes()  # protobuf records: the names are in there
    missing = [
        n
        for n in (b"weight_bits", b"distill/train/loss", b"distill/step", b"distill/dev/rougeLsum")
        if n not in records
    ]
    assert not missing, (missing, len(records))
    assert (work / "metrics.jsonl").exists() and (work / "tensorboard" / "distill").is_dir()


def test_the_profiler_window_traces_exactly_the_chosen_steps(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer.jax.profiler, "start_trace", lambda d, **kw: calls.append(("start", done[-1], d)))
    monkeypatch.setattr(trainer.jax.profiler, "stop_trace", lambda: calls.append(("stop", done[-1])))
    for first, total, expected in (
        (1, 10, [("start", 2, "P"), ("stop", 5)]),  # START=3: after step 2 finished
        (3, 10, [("start", 2, "P"), ("stop", 5)]),  # resumed at 2: the whole window
        (4, 10, []),  # resumed past START: nothing
        (1, 4, [("start", 2, "P"), ("stop", 4)]),
    ):  # the stage ends at 4
        calls.clear()
        done = [first - 1]
        window = trainer._Profiler((3, 5), "P", first, total)
        for step in range(first, total + 1):
            window.before(step, state=np.zeros(1))
            done.append(step)  # the step ran
            window.after(step, state=np.zeros(1))
        window.stop()
        assert calls == expected, (first, total)


# A demo job: teacher 8 steps, student 12, dev at 6 and the end, logs every 2 steps.
FLAGS = (
    "--config.stages=teacher,distill,eval",
    "--config.teacher.steps=8",
    "--config.train.steps=12",
    "--config.train.batch_size=8",
    "--config.train.checkpoint_every=2",
    "--config.train.eval_every=6",
    "--config.train.log_every=2",
    "--config.data.max_examples=64",
    "--config.eval.max_examples=8",
    "--config.eval.max_length=8",
)
PROFILE = "--config.train.profile_steps=3,4"


def _cmd(work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train.main", "--config", "configs/demo.py", "--workdir", str(work), *FLAGS, *extra]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run, with steps 3 and 4 of each stage traced."""
    work = tmp_path_factory.mktemp("straight")
    out = subprocess.run(_cmd(work, PROFILE), cwd=REPO, capture_output=True, text=True, env=_env(), timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return work


@pytest.mark.slow  # demo jobs end to end
def test_tensorboard_holds_losses_throughput_dev_test_and_config(straight):
    records = _records(straight)
    for stage, total, dev_steps in (("teacher", 8, [6, 8]), ("distill", 12, [6, 12])):
        scalars = _scalars(straight / "tensorboard" / stage)
        train = [r for r in records if r["stage"] == stage and r["split"] == "train"]
        assert [r["step"] for r in train] == list(range(2, total + 1, 2))
        terms = (
            "loss",
            "task",
            "grad_norm",
            "learning_rate",
            "step_time_s",
            "tokens_per_s",
            "tflops_per_device",
            "mfu",
        ) + (("logits", "enc_attn", "cross_attn", "enc_hidden", "enc_last") if stage == "distill" else ())
        for name in terms:  # every log step, in both places, the same numbers
            assert scalars[f"{stage}/train/{name}"] == [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in train]
        assert all(r["mfu"] > 0 and r["tokens_per_s"] > 0 and r["step_time_s"] > 0 for r in train)
        peaks = [r["tflops_per_device"] / r["mfu"] for r in train]  # one peak for the whole stage
        assert peaks == pytest.approx([peaks[0]] * len(peaks))
        base = {"teacher": 1e-3, "distill": 5e-4}[stage]  # configs/demo.py; no warm-up at these lengths
        assert [r["learning_rate"] for r in train] == [
            pytest.approx(base * (1 - (r["step"] - 1) / total)) for r in train
        ]  # what step s's update applied
        assert [s for s, _ in scalars[f"{stage}/dev/rougeLsum"]] == dev_steps
        assert set(scalars) == {f"{stage}/train/{k}" for k in train[0] if k not in ("stage", "split", "step")} | {
            f"{stage}/dev/{m}" for m in ("rouge1", "rouge2", "rougeL", "rougeLsum")
        }
    results = json.loads((straight / "results.json").read_text())
    test = _scalars(straight / "tensorboard" / "eval")
    assert test["teacher/test/rougeLsum"] == [(0, pytest.approx(results["teacher_test"]["rougeLsum"]))]
    assert test["distill/test/rougeLsum"] == [(0, pytest.approx(results["student_test"]["rougeLsum"]))]
    config = _events(straight / "tensorboard").Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config) == results["config"]  # indented as a Markdown code block; JSON ignores that


def _step_calls(trace: Path) -> int:
    """Calls of the jitted train step in a Perfetto trace (each is two nested events: Python's and JAX's)."""
    with gzip.open(trace) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "PjitFunction(step)")
    outer = [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]
    return len(outer)


@pytest.mark.slow  # demo jobs end to end
def test_profile_steps_trace_those_steps_of_each_stage(straight):
    for stage in ("teacher", "distill"):
        runs = list((straight / "profile" / stage / "plugins" / "profile").iterdir())
        assert len(runs) == 1 and list(runs[0].glob("*.xplane.pb"))
        assert _step_calls(runs[0] / "perfetto_trace.json.gz") == 2  # steps 3 and 4


@pytest.mark.slow  # demo jobs end to end
def test_sigkill_during_distillation_then_rerun_logs_each_step_once_with_the_same_results(straight, tmp_path):
    work = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as err:
        proc = subprocess.Popen(_cmd(work), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=_env())
    latest = work / "checkpoints" / "distill" / "latest"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (latest / "4").is_dir():
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work / "student_hf").exists()
    out = subprocess.run(_cmd(work), cwd=REPO, capture_output=True, text=True, env=_env(), timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "distill: resumed from step" in out.stderr and "teacher: resumed" not in out.stderr

    a, b = json.loads((straight / "results.json").read_text()), json.loads((work / "results.json").read_text())
    for key in ("teacher_dev", "student_dev", "teacher_test", "student_test", "size"):
        assert b[key] == a[key], key
    assert not (work / "profile").exists()  # no train.profile_steps, no trace

    losses = lambda recs: [
        (r["stage"], r["split"], r["step"], r.get("loss"), r.get("rougeLsum")) for r in recs if r["split"] != "test"
    ]
    assert losses(_records(work)) == losses(_records(straight))  # each step once, the same numbers
    for run in ("teacher", "distill", "eval"):
        killed, whole = _scalars(work / "tensorboard" / run), _scalars(straight / "tensorboard" / run)
        assert killed.keys() == whole.keys()
        for tag in killed:
            assert [s for s, _ in killed[tag]] == [s for s, _ in whole[tag]], tag
            if tag.split("/")[-1] not in ("step_time_s", "tokens_per_s", "tflops_per_device", "mfu"):
                assert [v for _, v in killed[tag]] == [v for _, v in whole[tag]], tag


def test_wandb_missing_is_one_clear_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match=r"train.wandb_project='p' needs the wandb package.*\.\[wandb\]"):
        MetricsLog(str(tmp_path), wandb_project="p")
