"""Rematerialization (`Seq2SeqLM(remat=...)`, `dq_jax.model.remat`): the same params, losses, gradients
and generations as without it, and less compiled memory."""

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from dq_jax.inference.generate import generate
from dq_jax.inference.generation_config import GenerationConfig
from dq_jax.model import modeling, remat
from dq_jax.model.config import ModelConfig
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.model.sizes import model_config
from dq_jax.parallel import sharding
from dq_jax.quant.config import QuantConfig
from dq_jax.training import distill, train_step
from tests.hf_models import distill_batch

TEACHER = ModelConfig(
    vocab_size=128,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=32,
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.1,
)
QUANTS = {
    "2-2-8": QuantConfig(2, 2, 8, compute="fake"),
    "2-2-8 codes": QuantConfig(2, 2, 8, compute="codes"),
    "tbt 2-2-2": QuantConfig(2, 2, 2, method="tbt"),
}  # elastic: learned step sizes inside the remat region
MODES = ("full", "dots")
# Dropout keys for the compiled losses: masks from XLA's RngBitGenerator compile several times
# faster than threefry's; the remat region must reproduce them either way.
DROPOUT_KEY = jax.random.key(7, impl="rbg")


def _rel(a, b) -> float:
    """||a - b|| / ||b|| over whole trees."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)) for x, y in zip(a, b))
    den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in b)
    return float(np.sqrt(num / max(den, 1e-30)))


@pytest.fixture(scope="module")
def setup():
    ids = jnp.zeros((1, 4), jnp.int32)
    t_params = jax.device_get(jax.jit(Seq2SeqLM(TEACHER).init)(jax.random.key(0), ids, decoder_input_ids=ids)["params"])
    s_cfg, s_params = distill.init_student(TEACHER, t_params, 2, 1)
    leaves, tree = jax.tree.flatten(s_params)  # away from the teacher: every loss term non-zero
    keys = jax.random.split(jax.random.key(1), len(leaves))
    s_params = jax.tree.unflatten(
        tree, [np.asarray(x) + 0.01 * np.asarray(jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]
    )
    dcfg = distill.DistillConfig(
        mode="dq_bart", encoder_map=distill.layer_map(2, 2), decoder_map=distill.layer_map(2, 1)
    )
    batch = {k: v[0] for k, v in distill_batch(TEACHER.vocab_size, accum=1, seed=0).items()}  # [B, L]
    return t_params, s_cfg, s_params, dcfg, batch


def test_names_and_options():
    assert remat.REMAT == ("none", "full", "dots")
    from configs import demo
    from train.settings import spec_from_config

    c = demo.get_config()
    c.train.remat = "some"  # the run's settings check the name; the model trusts them
    with pytest.raises(ValueError, match=r"train.remat='some'; choose one of \['none', 'full', 'dots'\]"):
        spec_from_config(c)
    assert remat.compiler_options("none", "cpu") == {} and remat.compiler_options("full", "gpu") == {}
    assert remat.compiler_options("dots", "cpu") == {"xla_disable_hlo_passes": remat.CPU_BARRIER_PASS}


@pytest.mark.parametrize("quant", list(QUANTS), ids=list(QUANTS))
def test_params_tree_is_identical(setup, quant):
    """Same names, shapes and dtypes (initial values: `test_loss_and_gradients_equal_none`)."""
    _, s_cfg, _, _, batch = setup
    ids, dids = batch["input_ids"], batch["decoder_input_ids"]
    init = lambda mode: jax.eval_shape(
        lambda: Seq2SeqLM(s_cfg, QUANTS[quant], remat=mode).init(jax.random.key(3), ids, decoder_input_ids=dids)
    )
    ref = init("none")
    assert "layers_1" in ref["params"]["encoder"] and "self_attn" in ref["params"]["encoder"]["layers_1"]
    assert ("elastic" in ref) == QUANTS[quant].elastic
    for mode in MODES:
        ours = init(mode)
        assert jax.tree_util.tree_flatten_with_path(ours) == jax.tree_util.tree_flatten_with_path(ref), mode


def _student_params(setup, quant, mode):
    """The student's trainable tree; TBT's step sizes initialized through the model with `mode`."""
    _, s_cfg, s_params, _, batch = setup
    model = Seq2SeqLM(s_cfg, QUANTS[quant], remat=mode)
    return model, modeling.init_elastic(
        model, s_params, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"]
    )


@pytest.mark.parametrize(
    "quant,modes",
    [
        ("2-2-8", MODES),
        pytest.param("2-2-8 codes", ("full",), marks=pytest.mark.slow),
        pytest.param("tbt 2-2-2", ("full",), marks=pytest.mark.slow),
    ],
    ids=["2-2-8", "2-2-8 codes", "tbt 2-2-2"],
)
def test_loss_and_gradients_equal_none(setup, quant, modes):
    """The train step's student loss (dropout on, all DQ terms) and its gradient, compiled as the
    step is (with `remat.compiler_options`)."""
    t_params, _, _, dcfg, batch = setup
    t_out = jax.jit(lambda p: train_step._forward(Seq2SeqLM(TEACHER), p, batch, False, True, True))(t_params)
    rng = DROPOUT_KEY

    def grad(mode):
        model, params = _student_params(setup, quant, mode)

        def loss(p):
            out = train_step._forward(model, p, batch, False, True, False, rng)
            return distill.distill_loss(out, t_out, batch, dcfg)

        fn = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=remat.compiler_options(mode) or None)
        (value, terms), g = fn(params)
        return params, value, terms, g

    ref_params, ref_loss, ref_terms, ref_grad = grad("none")
    assert ref_terms["logits"] > 0 and ref_terms["enc_attn"] > 0 and _rel(ref_grad, ref_grad) == 0
    if QUANTS[quant].elastic:
        assert (
            modeling.ELASTIC in ref_grad
            and float(jnp.abs(ref_grad[modeling.ELASTIC]["encoder"]["layers_0"]["fc1"]["act"]["alpha"])) > 0
        )
    for mode in modes:
        params, loss, terms, g = grad(mode)
        assert _rel(params, ref_params) == 0, mode  # TBT's step sizes initialize the same under remat
        assert _rel(loss, ref_loss) <= 1e-6, (mode, float(loss), float(ref_loss))
        assert _rel(terms, ref_terms) <= 1e-6, mode
        assert _rel(g, ref_grad) <= 1e-6, (mode, _rel(g, ref_grad))
        print(f"{quant} {mode}: loss rel. diff {_rel(loss, ref_loss):.1e}, gradient {_rel(g, ref_grad):.1e}")


def test_train_step_matches_none(setup):
    """A real (jitted, donated, AdamW) step, compiled with the options remat needs: the same
    metrics and params as without remat. (Dropout off here: it is in the test above.)"""
    t_params, s_cfg, s_params, dcfg, _ = setup
    s_cfg = s_cfg.replace(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    tx = train_step.make_optimizer(train_step.OptimConfig(learning_rate=1e-3, total_steps=10), s_params)
    t_sh = sharding.param_shardings(t_params, mesh)
    teacher = jax.device_put(t_params, t_sh)

    def run(mode):
        fn = train_step.make_train_step(Seq2SeqLM(s_cfg, QUANTS["2-2-8"], remat=mode), Seq2SeqLM(TEACHER), dcfg, tx)
        assert fn.compiler_options == remat.compiler_options(mode)
        state, st_sh = train_step.init_state(s_params, tx, jax.random.key(0), mesh)
        step = train_step.compile_step(fn, mesh, st_sh, t_sh)
        metrics = []
        batch = train_step.shard_batch(distill_batch(TEACHER.vocab_size, accum=1), mesh)
        state, m = step(state, teacher, batch)
        metrics.append(jax.device_get(m))
        return jax.device_get(state.params), metrics

    ref_params, ref_metrics = run("none")
    for mode in ("full",):  # the options are the same for `dots`
        params, metrics = run(mode)
        for ours, ref in zip(metrics, ref_metrics):
            assert _rel(ours["loss"], ref["loss"]) <= 1e-6 and _rel(ours["grad_norm"], ref["grad_norm"]) <= 1e-6
        assert _rel(params, ref_params) <= 1e-6, mode


def test_generation_runs_unchanged(setup):
    """A remat model (as the teacher stage evaluates on dev) generates with its KV cache as before."""
    t_params, _, _, _, batch = setup
    gen = GenerationConfig(num_beams=1, max_length=8)
    ref = generate(Seq2SeqLM(TEACHER), t_params, batch["input_ids"], batch["attention_mask"], gen)
    for mode in ("full",):  # without differentiation the policy plays no part
        out = generate(Seq2SeqLM(TEACHER, remat=mode), t_params, batch["input_ids"], batch["attention_mask"], gen)
        np.testing.assert_array_equal(out.sequences, ref.sequences)
        np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-6)


def test_dots_saves_projections_not_attention_scores(setup):
    """What each policy keeps for the backward of the layers (see `dq_jax.model.remat`)."""
    _, s_cfg, s_params, _, batch = setup
    b, s = batch["input_ids"].shape
    scores = (b, TEACHER.encoder_attention_heads, s, s)

    def residuals(mode):
        model = Seq2SeqLM(s_cfg, QUANTS["2-2-8"], remat=mode)
        loss = lambda p: jnp.sum(
            model.apply({"params": p}, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"]).logits
            ** 2
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):  # the public API prints "f32[2,6,32] output of dot_general from ..."
            print_saved_residuals(loss, s_params)
        lines = [re.match(r"\w+\[([\d,]*)\] (.*)", line) for line in out.getvalue().splitlines()]
        return [(tuple(int(d) for d in m[1].split(",") if d), m[2]) for m in lines if m]

    in_layers = lambda res, shape: [why for sh, why in res if sh == shape and "modeling.py" not in why]
    dots_out = lambda res: [sh for sh, why in res if "dot_general" in why]
    none, full, dots = residuals("none"), residuals("full"), residuals("dots")
    assert len(in_layers(none, scores)) > 0 and len(in_layers(dots, scores)) == 0
    ffn = (b, s, s_cfg.encoder_ffn_dim)
    assert ffn in dots_out(dots)
    assert not any(len(sh) == 3 and sh[-1] == s_cfg.encoder_ffn_dim for sh in dots_out(full))
    assert len(full) < len(dots) < len(none)


def test_full_remat_lowers_compiled_temporaries():
    """A compile (no allocation) of the student's gradient at a moderate size."""
    cfg = model_config("tiny", dropout=0.1)
    params = jax.eval_shape(
        lambda: Seq2SeqLM(cfg).init(
            jax.random.key(0), jnp.zeros((1, 2), jnp.int32), decoder_input_ids=jnp.zeros((1, 2), jnp.int32)
        )
    )["params"]
    ids, dids = jax.ShapeDtypeStruct((8, 128), jnp.int32), jax.ShapeDtypeStruct((8, 32), jnp.int32)

    def temp_bytes(mode):
        model = Seq2SeqLM(cfg, QuantConfig(2, 2, 8), remat=mode)

        def loss(p, x, d):
            out = model.apply(
                {"params": p},
                x,
                None,
                d,
                output_hidden_states=True,
                output_attentions=True,
                deterministic=False,
                rngs={"dropout": DROPOUT_KEY},
            )
            return jnp.mean(out.logits**2) + sum(jnp.mean(a**2) for a in out.encoder_attentions)

        fn = jax.jit(jax.grad(loss), compiler_options=remat.compiler_options(mode) or None)
        return fn.lower(params, ids, dids).compile().memory_analysis().temp_size_in_bytes

    none, full = temp_bytes("none"), temp_bytes("full")  # `dots`: bench/remat.py
    print(f"compiled temporaries: none {none / 2**20:.1f} MiB, full {full / 2**20:.1f} MiB")
    assert full < 0.75 * none
