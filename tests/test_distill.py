"""Layer maps, student initialization, and the distillation loss against a torch reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dq_jax.model import hf, hf_layout, modeling
from dq_jax.training import distill
from dq_jax.training.distill import DistillConfig, distill_loss, init_student, layer_map, resolve_map
from tests.hf_models import make_hf_model, padded_batch, torch_forward

ENC_MAP, DEC_MAP = (0, 3), (0, 1, 3)  # 4-layer teacher -> 2-3 student; neither is the identity
TERMS = ("task", "logits", "enc_attn", "dec_attn", "cross_attn", "enc_hidden", "dec_hidden", "enc_last")


# ----------------------------------------------------------------------------- layer maps


def test_six_layer_teacher_uses_the_reference_table():
    assert [layer_map(6, n) for n in range(1, 7)] == [
        (5,),
        (0, 5),
        (0, 2, 5),
        (0, 2, 3, 5),
        (0, 1, 3, 4, 5),
        (0, 1, 2, 3, 4, 5),
    ]


@pytest.mark.parametrize("teacher", [2, 3, 5, 6, 7, 12, 16, 24])
def test_rule_keeps_ends_and_spreads_evenly(teacher):
    for n in range(1, teacher + 1):
        m = layer_map(teacher, n)
        assert len(m) == n and m[-1] == teacher - 1
        if n == 1:
            continue
        gaps = np.diff(m)
        assert m[0] == 0 and gaps.min() >= 1 and gaps.max() - gaps.min() <= 1, (n, m)
    assert layer_map(teacher, teacher) == tuple(range(teacher))


def test_rule_literal_values():
    assert layer_map(12, 3) == (0, 6, 11)
    assert layer_map(12, 6) == (0, 2, 4, 7, 9, 11)
    assert layer_map(24, 1) == (23,)
    assert layer_map(24, 12) == (0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23)


def test_explicit_map_overrides_the_rule():
    assert resolve_map(6, 3, (1, 3, 4), "encoder") == (1, 3, 4)
    assert resolve_map(6, 3, None, "encoder") == resolve_map(6, 3, (), "encoder") == (0, 2, 5)
    with pytest.raises(ValueError, match=r"decoder layer map \(0, 6\) has index 6 .* decoder layers 0\.\.5"):
        resolve_map(6, 2, (0, 6), "decoder")
    with pytest.raises(ValueError, match=r"has 1 entries but the student has 2 encoder layers"):
        resolve_map(6, 2, (0,), "encoder")


def test_bad_depths_are_clear_errors():
    with pytest.raises(ValueError, match="student has 8 decoder layers but the teacher only 6"):
        resolve_map(6, 8, None, "decoder")
    with pytest.raises(ValueError, match="must be positive"):
        layer_map(6, 0)
    with pytest.raises(ValueError, match="must be positive"):
        layer_map(-1, 1)


# ----------------------------------------------------------------------------- student init


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-4 BART teacher: (torch model, config, params)."""
    model = make_hf_model("bart", seed=0, encoder_layers=4, decoder_layers=4)
    path = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(path)
    return (model, *hf.load_pretrained(str(path)))


def _paths(tree):
    return sorted(p for p, _ in hf_layout.flatten(tree))


def _teacher_path(path, maps):
    """Student param path -> the teacher path it was copied from."""
    if path[0] in maps and path[1].startswith("layers_"):
        return (path[0], f"layers_{maps[path[0]][int(path[1][7:])]}", *path[2:])
    return path


def test_init_student_copies_mapped_layers_and_the_rest(teacher):
    _, cfg, params = teacher
    scfg, sparams = init_student(cfg, params, 2, 3, decoder_map=DEC_MAP)
    assert (scfg.encoder_layers, scfg.decoder_layers) == (2, 3)
    assert scfg == cfg.replace(encoder_layers=2, decoder_layers=3)
    assert _paths(sparams) == _paths(modeling.abstract_params(scfg))
    hf.check_params(scfg, sparams)
    np.testing.assert_array_equal(
        sparams["encoder"]["layers_1"]["fc1"]["kernel"], params["encoder"]["layers_3"]["fc1"]["kernel"]
    )
    np.testing.assert_array_equal(
        sparams["decoder"]["layers_2"]["encoder_attn"]["k_proj"]["kernel"],
        params["decoder"]["layers_3"]["encoder_attn"]["k_proj"]["kernel"],
    )
    maps = {"encoder": ENC_MAP, "decoder": DEC_MAP}
    teacher_leaves = dict(hf_layout.flatten(params))
    for path, leaf in hf_layout.flatten(sparams):
        np.testing.assert_array_equal(leaf, teacher_leaves[_teacher_path(path, maps)], err_msg=str(path))
    assert sparams["shared"]["embedding"] is params["shared"]["embedding"]
    assert sparams["final_logits_bias"] is params["final_logits_bias"]
    assert sparams["encoder"] is not params["encoder"]  # new structure, shared leaves


def test_init_student_keeps_jax_leaves_and_mbart_final_norms():
    model = make_hf_model("mbart", encoder_layers=3, decoder_layers=3)
    cfg = modeling.ModelConfig.from_hf_dict(model.config.to_dict())
    params = jax.tree.map(
        jnp.asarray, hf_layout.state_dict_to_params({k: v.detach().numpy() for k, v in model.state_dict().items()})
    )
    scfg, sparams = init_student(cfg, params, 1, 2)
    hf.check_params(scfg, sparams)
    for side in ("encoder", "decoder"):
        assert sparams[side]["layer_norm"]["scale"] is params[side]["layer_norm"]["scale"]
    assert sparams["encoder"]["layers_0"]["fc2"]["kernel"] is params["encoder"]["layers_2"]["fc2"]["kernel"]
    assert sparams["decoder"]["layers_1"]["fc2"]["kernel"] is params["decoder"]["layers_2"]["fc2"]["kernel"]
    with pytest.raises(ValueError, match="student has 4 encoder layers but the teacher only 3"):
        init_student(cfg, params, 4, 2)


# ----------------------------------------------------------------------------- loss parity


def _batch(vocab):
    ids, am, dids, dam = padded_batch(vocab, batch=3, src=9, tgt=7)
    labels = np.random.RandomState(1).randint(3, vocab, dids.shape)
    labels[dam == 0] = -100
    return dict(input_ids=ids, attention_mask=am, decoder_input_ids=dids, decoder_attention_mask=dam, labels=labels)


def _flax_out(cfg, params, b):
    return modeling.Seq2SeqLM(cfg).apply(
        {"params": params},
        b["input_ids"],
        b["attention_mask"],
        b["decoder_input_ids"],
        b["decoder_attention_mask"],
        output_hidden_states=True,
        output_attentions=True,
        deterministic=True,
    )


@pytest.fixture(scope="module")
def pair(teacher, tmp_path_factory):
    """Flax and torch outputs of a 4-4 teacher and a separately random 2-3 student."""
    t_model, t_cfg, t_params = teacher
    s_model = make_hf_model("bart", seed=1, encoder_layers=2, decoder_layers=3)
    path = tmp_path_factory.mktemp("student")
    s_model.save_pretrained(path)
    s_cfg, s_params = hf.load_pretrained(str(path))
    b = _batch(t_cfg.vocab_size)
    args = (b["input_ids"], b["attention_mask"], b["decoder_input_ids"], b["decoder_attention_mask"])
    return dict(
        batch=b,
        s=_flax_out(s_cfg, s_params, b),
        t=_flax_out(t_cfg, t_params, b),
        s_torch=torch_forward(s_model, *args),
        t_torch=torch_forward(t_model, *args),
    )


def _torch_reference(s, t, batch, mode, w_logit, w_inter):
    """The METHOD.md formulas in torch (float64), independent of dq_jax.training.distill."""
    d = lambda x: x.double()
    labels = torch.tensor(batch["labels"])
    out = {"task": F.cross_entropy(d(s.logits).flatten(0, 1), labels.flatten(), ignore_index=-100)}
    if mode == "dq_bart":
        mse = lambda a, b, mask=None: F.mse_loss(d(a), d(b))
        src = tgt = None
    else:

        def mse(a, b, mask):
            mask = mask.expand_as(a).double()
            return ((d(a) - d(b)) ** 2 * mask).sum() / mask.sum()

        src = torch.tensor(batch["attention_mask"]).double()
        tgt = torch.tensor(batch["decoder_attention_mask"]).double()
    att = lambda q, k: None if q is None else q[:, None, :, None] * k[:, None, None, :]
    tok = lambda m: None if m is None else m[..., None]
    out["logits"] = mse(s.logits, t.logits, tok(tgt))
    out["enc_attn"] = sum(
        mse(s.encoder_attentions[i], t.encoder_attentions[m], att(src, src)) for i, m in enumerate(ENC_MAP)
    )
    out["dec_attn"] = sum(
        mse(s.decoder_attentions[i], t.decoder_attentions[m], att(tgt, tgt)) for i, m in enumerate(DEC_MAP)
    )
    out["cross_attn"] = sum(
        mse(s.cross_attentions[i], t.cross_attentions[m], att(tgt, src)) for i, m in enumerate(DEC_MAP)
    )
    out["enc_hidden"] = sum(
        mse(h, t.encoder_hidden_states[0 if j == 0 else ENC_MAP[j - 1] + 1], tok(src))
        for j, h in enumerate(s.encoder_hidden_states)
    )
    out["dec_hidden"] = sum(
        mse(h, t.decoder_hidden_states[0 if j == 0 else DEC_MAP[j - 1] + 1], tok(tgt))
        for j, h in enumerate(s.decoder_hidden_states)
    )
    out["enc_last"] = (
        sum(F.mse_loss(d(a), d(b)) for a, b in zip(s.encoder_last_hidden_state, t.encoder_last_hidden_state))
        if mode == "dq_bart"
        else torch.zeros((), dtype=torch.float64)
    )
    inter = sum(out[k] for k in TERMS[2:])
    out["loss"] = out["task"] + w_logit * out["logits"] + w_inter * inter
    return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.8, 3.0)])
@pytest.mark.parametrize("mode", ["dq_bart", "masked"])
def test_loss_matches_torch_reference(pair, mode, weights):
    cfg = DistillConfig(mode, *weights, encoder_map=ENC_MAP, decoder_map=DEC_MAP)
    total, metrics = distill_loss(pair["s"], pair["t"], pair["batch"], cfg)
    ref = _torch_reference(pair["s_torch"], pair["t_torch"], pair["batch"], mode, *weights)
    assert set(metrics) == set(distill.METRIC_KEYS)
    assert float(total) == float(metrics["loss"])
    rel = {k: abs(float(metrics[k]) - ref[k]) / max(abs(ref[k]), 1e-30) for k in ref if ref[k] != 0}
    print(f"\n{mode} {weights}: largest relative difference {max(rel.values()):.2e} ({max(rel, key=rel.get)})")
    for k, v in ref.items():
        assert metrics[k].dtype == jnp.float32 and metrics[k].shape == ()
        np.testing.assert_allclose(float(metrics[k]), v, rtol=1e-4, atol=0, err_msg=k)
        assert v > 0 or (k == "enc_last" and mode == "masked"), k  # every term is exercised


def test_masked_mode_ignores_padding(pair):
    """Changing student outputs at padded positions changes dq_bart terms but not masked ones."""
    b, s, t = pair["batch"], pair["s"], pair["t"]
    pad_src = jnp.asarray(b["attention_mask"] == 0)[:, :, None]
    pad_tgt = jnp.asarray(b["decoder_attention_mask"] == 0)[:, :, None]
    noisy = s.replace(
        logits=jnp.where(pad_tgt, s.logits + 5.0, s.logits),
        encoder_hidden_states=tuple(jnp.where(pad_src, h + 5.0, h) for h in s.encoder_hidden_states),
    )
    for mode, same in (("masked", True), ("dq_bart", False)):
        cfg = DistillConfig(mode, encoder_map=ENC_MAP, decoder_map=DEC_MAP)
        _, a = distill_loss(s, t, b, cfg)
        _, n = distill_loss(noisy, t, b, cfg)
        for k in ("logits", "enc_hidden"):
            assert np.isclose(float(a[k]), float(n[k]), rtol=1e-6) == same, (mode, k)


# ----------------------------------------------------------------------------- behaviour


def test_jit_matches_eager_and_teacher_gets_no_gradient(pair):
    b, s, t = pair["batch"], pair["s"], pair["t"]
    cfg = DistillConfig("masked", 0.8, 3.0, ENC_MAP, DEC_MAP)
    eager = distill_loss(s, t, b, cfg)[1]
    jitted = jax.jit(distill_loss, static_argnames="cfg")(s, t, b, cfg=cfg)[1]
    for k in distill.METRIC_KEYS:
        np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-5, err_msg=k)
    gs, gt = jax.jit(jax.grad(lambda s, t: distill_loss(s, t, b, cfg)[0], argnums=(0, 1)))(s, t)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(gs))
    assert float(jnp.abs(gs.logits).sum()) > 0 and float(jnp.abs(gs.encoder_attentions[0]).sum()) > 0
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(gt))


def test_without_teacher_the_loss_is_the_task_loss(pair):
    b, s, t = pair["batch"], pair["s"], pair["t"]
    task = distill.task_loss(s.logits, b["labels"])
    no_weights = DistillConfig(logit_weight=0, inter_weight=0)
    assert not no_weights.uses_teacher and DistillConfig().uses_teacher
    for teacher_out, cfg in ((t, no_weights), (None, DistillConfig())):
        total, m = distill_loss(s, teacher_out, b, cfg)
        assert float(total) == float(task) == float(m["task"])
        assert all(float(m[k]) == 0 for k in TERMS[1:])
    # inter_weight 0: intermediate outputs need not exist
    bare = lambda o: o.replace(
        encoder_hidden_states=None,
        decoder_hidden_states=None,
        encoder_attentions=None,
        decoder_attentions=None,
        cross_attentions=None,
    )
    total, m = distill_loss(bare(s), bare(t), b, DistillConfig(inter_weight=0))
    np.testing.assert_allclose(total, m["task"] + m["logits"], rtol=1e-6)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        distill_loss(bare(s), t, b, DistillConfig(encoder_map=ENC_MAP, decoder_map=DEC_MAP))


def test_bf16_inputs_give_fp32_terms(pair):
    b, s, t = pair["batch"], pair["s"], pair["t"]
    cfg = DistillConfig(encoder_map=ENC_MAP, decoder_map=DEC_MAP)
    half = lambda o: jax.tree.map(lambda x: x.astype(jnp.bfloat16), o)
    _, m32 = distill_loss(s, t, b, cfg)
    _, m16 = distill_loss(half(s), half(t), b, cfg)
    for k in distill.METRIC_KEYS:
        assert m16[k].dtype == jnp.float32
        np.testing.assert_allclose(m16[k], m32[k], rtol=0.05, err_msg=k)


def test_task_loss_with_no_valid_label_is_zero():
    logits = jnp.ones((2, 3, 5), jnp.bfloat16)
    assert float(distill.task_loss(logits, -100 * jnp.ones((2, 3), jnp.int32))) == 0.0
    np.testing.assert_allclose(distill.task_loss(logits, jnp.zeros((2, 3), jnp.int32)), np.log(5), rtol=1e-6)


def test_student_copied_from_teacher_has_zero_distillation_terms(teacher, pair):
    _, cfg, params = teacher
    scfg, sparams = init_student(cfg, params, 4, 4)
    b = pair["batch"]
    _, m = distill_loss(_flax_out(scfg, sparams, b), pair["t"], b, DistillConfig())
    assert all(float(m[k]) == 0 for k in TERMS[1:]), m
    assert float(m["loss"]) == float(m["task"]) > 0


def test_config_validation_and_default_maps(pair):
    from configs import demo
    from train.settings import spec_from_config

    c = demo.get_config()
    c.distill.mode = "kl"  # the run's settings check the mode; DistillConfig trusts them
    with pytest.raises(ValueError, match=r"distill.mode='kl'; choose one of \['dq_bart', 'masked'\]"):
        spec_from_config(c)
    cfg = DistillConfig(encoder_map=[0, 3], decoder_map=[0, 1, 3])  # lists from ml_collections
    assert cfg.encoder_map == ENC_MAP and hash(cfg)
    # empty maps: the rule on the depths seen in the outputs (4 -> 2 is (0, 3); 4 -> 3 is (0, 2, 3))
    b, s, t = pair["batch"], pair["s"], pair["t"]
    _, by_rule = distill_loss(s, t, b, DistillConfig())
    _, explicit = distill_loss(s, t, b, DistillConfig(encoder_map=(0, 3), decoder_map=(0, 2, 3)))
    for k in distill.METRIC_KEYS:
        assert float(by_rule[k]) == float(explicit[k]), k
    with pytest.raises(ValueError, match="outside the teacher's attention outputs"):
        distill_loss(s, t, b, DistillConfig(encoder_map=(0, 4), decoder_map=DEC_MAP))
