"""The planner (`train.plan`): per-device argument bytes as the real sharded state and batch
hold them, the exit and advice when a stage does not fit, and stages that do not run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import demo
from dq_jax import planner, stages
from dq_jax.model.config import ModelConfig
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.parallel import sharding
from dq_jax.training import distill, train_step
from tests.hf_models import distill_batch
from train.settings import spec_from_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = ModelConfig(
    vocab_size=128,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
)
SRC, TGT, BATCH, ACCUM = 32, 16, 8, 2


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """An HF teacher directory with its config.json only: all the planner reads."""
    path = tmp_path_factory.mktemp("teacher")
    (path / "config.json").write_text(json.dumps(TEACHER.to_hf_dict()))
    return str(path)


def _overrides(teacher_dir: str, **more) -> dict:
    return {
        "teacher.path": teacher_dir,
        "teacher.scratch": "",
        "teacher.tokenizer": "",
        "student.layers": "1-1",
        "data.synthetic": "",
        "data.max_source_length": SRC,
        "data.max_target_length": TGT,
        "data.min_bucket": 16,
        "train.batch_size": BATCH,
        "train.grad_accum": ACCUM,
        **more,
    }


def _spec(teacher_dir: str, **more):
    c = demo.get_config()
    for key, value in _overrides(teacher_dir, **more).items():
        section, name = key.split(".") if "." in key else (None, key)
        if section:
            c[section][name] = value
        else:
            c[name] = value
    return spec_from_config(c)


def _bytes_on(device, tree) -> int:
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


@pytest.mark.parametrize("mesh", [(1, 8, 1), pytest.param((2, 2, 2), marks=pytest.mark.slow)])
def test_argument_bytes_match_the_real_sharded_state_and_batch(teacher_dir, mesh):
    spec = _spec(teacher_dir, mesh=mesh, stages="distill,eval")
    p = planner.plan(spec)
    (stage,) = p.stages
    assert stage.stage == "distill" and stage.mesh == mesh and stage.flops > 0 and stage.temp_bytes > 0
    assert (stage.accum, stage.batch_size, stage.source_length, stage.target_length) == (ACCUM, BATCH, SRC, TGT)

    # the real thing, as the pipeline and trainer build it: teacher params, student, train state, batch
    ids = jnp.zeros((1, 4), jnp.int32)
    t_params = jax.device_get(jax.jit(Seq2SeqLM(TEACHER).init)(jax.random.key(0), ids, decoder_input_ids=ids)["params"])
    _, s_params = distill.init_student(TEACHER, t_params, 1, 1)
    m = sharding.make_mesh(mesh)
    tx = train_step.make_optimizer(train_step.OptimConfig.of(spec.train, 1000), s_params)
    state, _ = train_step.init_state(s_params, tx, jax.random.PRNGKey(spec.seed), m)
    teacher = jax.device_put(t_params, sharding.param_shardings(t_params, m))
    batch = train_step.shard_batch(distill_batch(TEACHER.vocab_size, ACCUM, BATCH, SRC, TGT), m)
    device = m.devices.flat[0]
    real = _bytes_on(device, state) + _bytes_on(device, teacher) + _bytes_on(device, batch)
    assert abs(stage.argument_bytes - real) <= 0.05 * real, (stage.argument_bytes, real)
    assert stage.batch_bytes == _bytes_on(device, batch)
    assert abs(stage.alias_bytes - _bytes_on(device, state)) <= 0.05 * _bytes_on(device, state)


def test_too_small_device_memory_exits_with_advice(teacher_dir):
    args = [f"--config.{k}={v}" for k, v in _overrides(teacher_dir, stages="distill").items()]
    proc = subprocess.run(
        [sys.executable, "-m", "train.plan", "--config", "configs/demo.py", *args, "--device_memory_gib=0.001"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "skipped: teacher (not in stages)" in out
    assert "| NO" in out and "distill: needs" in out and "more than the 0.00 GiB" not in out
    for advice in ("FSDP", "--config.train.remat=full", "--config.train.grad_accum=4", "--config.train.batch_size=4"):
        assert advice in out, out
    assert "does not fit" in proc.stderr


def test_stages_that_do_not_run_are_skipped(teacher_dir):
    assert stages.trained_stages(_spec(teacher_dir)) == (("teacher", "distill"), ())
    assert stages.trained_stages(_spec(teacher_dir, stages="distill,eval")) == (
        ("distill",),
        (("teacher", "not in stages"),),
    )
    names, skipped = stages.trained_stages(_spec(teacher_dir, **{"teacher.finetune": False}))
    assert names == ("distill",) and skipped[0][0] == "teacher" and "finetune=False" in skipped[0][1]
    p = planner.plan(_spec(teacher_dir, stages="eval,export"))  # nothing trains: nothing compiles
    assert p.stages == () and {s for s, _ in p.skipped} == {"teacher", "distill"}


def test_known_hub_teacher_falls_back_to_its_standard_shapes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = demo.get_config()
    c.teacher.path, c.teacher.scratch, c.teacher.tokenizer = "facebook/bart-base", "", ""
    shape = stages.teacher_shape(spec_from_config(c))
    assert (shape.cfg.d_model, shape.cfg.encoder_layers, shape.cfg.vocab_size) == (768, 6, 50265)
    assert "standard 'base'" in shape.source


def test_advice_names_the_numbers():
    stage = planner.StagePlan(
        "distill",
        (2, 4, 1),
        2,
        16,
        128,
        32,
        "none",
        1.0,
        1e9,
        argument_bytes=3 << 30,
        output_bytes=2 << 30,
        alias_bytes=2 << 30,
        temp_bytes=10 << 30,
        code_bytes=0,
    )
    p = planner.Plan(stages.TeacherShape(TEACHER, "test"), TEACHER, (stage,), (), stage.mesh, "cpu", 8, 8 << 30)
    assert p.too_big == (stage,) and stage.total_bytes == 13 << 30 and stage.rows_per_device == 2
    text = "\n".join(planner.advice(p, stage))
    assert "needs 13.00 GiB per device, 5.00 GiB more than the 8.00 GiB" in text
    assert "--config.mesh='(1,8,1)'" in text and "--config.mesh='(8,1,1)'" in text  # FSDP, data parallel
    assert "--config.train.remat=full" in text
    assert "--config.train.batch_size=8 --config.train.grad_accum=4" in text and "(2 -> 1)" in text
