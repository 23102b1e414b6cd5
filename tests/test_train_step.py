"""The sharded DQ train step: same numbers on 1 device and on 8, sharded as the rules say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dq_jax.model.config import ModelConfig
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.parallel import sharding
from dq_jax.quant.config import QuantConfig
from dq_jax.training import distill, train_step
from tests.hf_models import distill_batch

TEACHER = ModelConfig(
    vocab_size=128,
    d_model=32,
    encoder_layers=3,
    decoder_layers=3,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=32,
    dropout=0.1,
)


@pytest.fixture(scope="module")
def setup():
    ids = jnp.zeros((1, 4), jnp.int32)
    teacher_params = jax.jit(Seq2SeqLM(TEACHER).init)(jax.random.key(0), ids, decoder_input_ids=ids)["params"]
    teacher_params = jax.device_get(teacher_params)
    student_cfg, student_params = distill.init_student(TEACHER, teacher_params, 2, 1)
    # move the student away from the teacher so every distillation term is non-zero
    leaves, tree = jax.tree.flatten(student_params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    student_params = jax.tree.unflatten(
        tree, [np.asarray(x) + 0.01 * np.asarray(jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]
    )
    dcfg = distill.DistillConfig(
        mode="dq_bart", encoder_map=distill.layer_map(3, 2), decoder_map=distill.layer_map(3, 1)
    )
    return teacher_params, student_cfg, student_params, dcfg


def _run(setup, mesh_shape, quant=None, steps=3, devices=None):
    teacher_params, student_cfg, student_params, dcfg = setup
    mesh = sharding.make_mesh(mesh_shape, devices)
    ocfg = train_step.OptimConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10, weight_decay=0.01)
    tx = train_step.make_optimizer(ocfg, student_params)
    state, st_sh = train_step.init_state(student_params, tx, jax.random.key(42), mesh)
    t_sh = sharding.param_shardings(teacher_params, mesh)
    teacher = jax.device_put(teacher_params, t_sh)
    fn = train_step.make_train_step(Seq2SeqLM(student_cfg, quant), Seq2SeqLM(TEACHER), dcfg, tx)
    step = train_step.compile_step(fn, mesh, st_sh, t_sh)
    losses = []
    for i in range(steps):
        state, metrics = step(state, teacher, train_step.shard_batch(distill_batch(TEACHER.vocab_size, seed=i), mesh))
        losses.append(jax.device_get(metrics))
    return state, losses, mesh


def _max_rel(a, b):
    """Relative difference of a tensor (or scalar) to the reference: ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


# fp32 is -m slow: the 2-2-8 case runs the same meshes and sharded step with the quantizers on
@pytest.mark.parametrize(
    "quant,tol",
    [pytest.param(None, 1e-5, id="fp32", marks=pytest.mark.slow), pytest.param(QuantConfig(2, 2, 8), 1e-3, id="2-2-8")],
)
def test_meshes_match_single_device(setup, quant, tol):
    ref_state, ref_losses, _ = _run(setup, (1, 1, 1), quant, devices=jax.devices()[:1])
    assert all(m["finite"] == 1 for m in ref_losses)
    assert ref_losses[-1]["loss"] < ref_losses[0]["loss"]
    for term in ("task", "logits", "enc_attn", "dec_attn", "cross_attn", "enc_hidden", "dec_hidden", "enc_last"):
        assert ref_losses[0][term] > 0, term
    worst = {}
    for mesh_shape in [(8, 1, 1), (2, 2, 2), (1, 2, 4)]:
        state, losses, _ = _run(setup, mesh_shape, quant)
        for ours, ref in zip(losses, ref_losses):
            for k in ref:
                assert _max_rel(ours[k], ref[k]) <= tol, (mesh_shape, k, ours[k], ref[k])
        diffs = jax.tree.leaves(jax.tree.map(_max_rel, jax.device_get(state.params), jax.device_get(ref_state.params)))
        worst[mesh_shape] = max(diffs)
        assert worst[mesh_shape] <= tol, (mesh_shape, worst[mesh_shape])
    print(f"largest relative parameter difference vs 1 device ({'fp32' if quant is None else '2-2-8'}):", worst)


def test_state_is_sharded_by_the_rules(setup):
    state, _, _mesh = _run(setup, (2, 2, 2), steps=1)
    emb = state.params["shared"]["embedding"]
    assert emb.sharding.spec == P("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (TEACHER.vocab_size // 2, TEACHER.d_model // 2)
    fc1 = state.params["encoder"]["layers_0"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P("fsdp", "tensor")
    q = state.params["decoder"]["layers_0"]["self_attn"]["q_proj"]
    assert q["kernel"].sharding.spec == P("fsdp", "tensor") and q["bias"].sharding.spec == P("tensor")
    assert state.params["encoder"]["layernorm_embedding"]["scale"].sharding.spec == P(None)
    # Adam moments are sharded like their parameters, the step counter is replicated
    adam_state = [s for s in jax.tree.leaves(state.opt_state) if s.shape == emb.shape]
    assert len(adam_state) == 2 and all(s.sharding.spec == P("tensor", "fsdp") for s in adam_state)
    assert state.step.sharding.spec == P()


def test_compiled_step_has_no_host_round_trips(setup):
    teacher_params, student_cfg, student_params, dcfg = setup
    mesh = sharding.make_mesh((2, 2, 2))
    tx = train_step.make_optimizer(train_step.OptimConfig(), student_params)
    state, st_sh = train_step.init_state(student_params, tx, jax.random.key(0), mesh)
    t_sh = sharding.param_shardings(teacher_params, mesh)
    teacher = jax.device_put(teacher_params, t_sh)
    step = train_step.compile_step(
        train_step.make_train_step(Seq2SeqLM(student_cfg, QuantConfig(2, 2, 8)), Seq2SeqLM(TEACHER), dcfg, tx),
        mesh,
        st_sh,
        t_sh,
    )
    batch = train_step.shard_batch(distill_batch(TEACHER.vocab_size), mesh)
    state, _ = step(state, teacher, batch)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        state, _metrics = step(state, teacher, batch)
    assert int(state.step) == 2


def test_non_finite_step_is_skipped_and_recorded(setup):
    teacher_params, student_cfg, student_params, dcfg = setup
    bad = jax.tree.map(np.copy, student_params)
    bad["decoder"]["layers_0"]["fc2"]["bias"][0] = np.inf
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    tx = train_step.make_optimizer(train_step.OptimConfig(), bad)
    state, st_sh = train_step.init_state(bad, tx, jax.random.key(0), mesh)
    t_sh = sharding.param_shardings(teacher_params, mesh)
    step = train_step.compile_step(
        train_step.make_train_step(Seq2SeqLM(student_cfg), Seq2SeqLM(TEACHER), dcfg, tx), mesh, st_sh, t_sh
    )
    before = jax.device_get((state.params, state.opt_state))
    batch = train_step.shard_batch(distill_batch(TEACHER.vocab_size), mesh)
    state, metrics = step(state, jax.device_put(teacher_params, t_sh), batch)
    assert metrics["finite"] == 0 and int(state.first_bad_step) == 0 and int(state.step) == 1
    after = jax.device_get((state.params, state.opt_state))  # the optimizer's moments and count too
    assert len(jax.tree.leaves(after)) == len(jax.tree.leaves(before)) > len(jax.tree.leaves(state.params))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)


def test_batch_and_mesh_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"needs 16 devices but only 8"):
        sharding.make_mesh((4, 2, 2))
    mesh = sharding.make_mesh((2, 2, 2))
    with pytest.raises(ValueError, match=r"batch size 6 does not divide over the 4 data-parallel devices"):
        sharding.check_batch(6, mesh)


def test_schedule_is_linear_warmup_then_linear_decay():
    s = train_step.OptimConfig(learning_rate=1.0, warmup_steps=4, total_steps=12).schedule()
    np.testing.assert_allclose([float(s(i)) for i in (0, 2, 4, 8, 12)], [0, 0.5, 1.0, 0.5, 0.0], atol=1e-7)
