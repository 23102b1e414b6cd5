"""TBT students: ternary/binary weights, elastic activations with learned step sizes, their
data-dependent init, training, sharding, packed export and config presets."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from configs import common, demo, xsum
from dq_jax import quant
from dq_jax.export import hf_dir as export
from dq_jax.export import packed
from dq_jax.model import hf, hf_layout, modeling
from dq_jax.parallel import sharding
from dq_jax.quant import policy
from dq_jax.quant.config import ELASTIC, QuantConfig
from dq_jax.training import distill, train_step
from tests.hf_models import make_hf_model, padded_batch


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    make_hf_model("bart", vocab_size=120).save_pretrained(d)
    return hf.load_pretrained(str(d))


def _batch(vocab):
    ids, am, dids, dam = padded_batch(vocab, batch=4)
    return jnp.asarray(ids), jnp.asarray(am), jnp.asarray(dids), jnp.asarray(dam)


def test_quant_config_tbt_rules():
    q = QuantConfig(2, 2, 2, method="tbt")
    # per row even with the default granularity
    assert q.elastic and policy.weight_rule(policy.Role.LINEAR, q).reduce_axes == (0,)
    assert not QuantConfig(2, 2, 8, method="tbt").elastic
    assert not QuantConfig(2, 2, 2).elastic  # DQ-BART's 2-bit activations stay dynamic symmetric
    assert QuantConfig(1, 1, 1, method="tbt").elastic
    with pytest.raises(ValueError, match=r"1-bit activations need quant\.method='tbt'"):
        QuantConfig(2, 2, 1)
    with pytest.raises(ValueError, match=r"allowed bits: \[1, 2\]"):
        QuantConfig(4, 2, 8, method="tbt")


def test_elastic_step_sizes_initialize_from_the_first_batch(teacher):
    cfg, params = teacher
    ids, am, dids, _ = _batch(cfg.vocab_size)
    model = modeling.Seq2SeqLM(cfg, QuantConfig(2, 2, 2, method="tbt"))
    p = modeling.init_elastic(model, params, ids, am, dids)
    alphas = dict(hf_layout.flatten(p[ELASTIC]))
    # every Linear input (6 per encoder layer, 10 per decoder layer) and q, k, probs, v of
    # every attention (1 per encoder layer, 2 per decoder layer)
    assert len(alphas) == 2 * (6 + 4) + 2 * (10 + 8)
    assert all(v.shape == () and v.dtype == np.float32 and v > 0 for v in alphas.values())
    # the first encoder Linear sees the embedding output: its step size is TBT's signed init of it
    h = model.apply({"params": params}, ids, method=lambda m, i: m.encoder.embed_inputs(i, 0, True))
    np.testing.assert_allclose(
        alphas[("encoder", "layers_0", "self_attn", "q_proj", "act", "alpha")],
        quant.elastic_init(h, 2, True),
        rtol=1e-6,
    )  # h fused differently under jit
    # fc2 (after GELU) and probabilities use the unsigned quantizer: 4 mean|x| / sqrt(2)
    fc2 = alphas[("encoder", "layers_0", "fc2", "act", "alpha")]
    _, inter = model.apply(
        modeling.variables(p),
        ids,
        am,
        dids,
        mutable=["intermediates"],
        capture_intermediates=lambda mdl, _: mdl.name == "fc1",
    )
    h1 = inter["intermediates"]["encoder"]["layers_0"]["fc1"]["__call__"][0]
    np.testing.assert_allclose(fc2, quant.elastic_init(jax.nn.gelu(h1, approximate=False), 2, False), rtol=1e-6)
    # a student without elastic activations is left alone
    same = modeling.init_elastic(modeling.Seq2SeqLM(cfg, QuantConfig(2, 2, 8, method="tbt")), params, ids, am, dids)
    assert ELASTIC not in same


def test_tbt_weights_are_per_output_row_ternary(teacher):
    cfg, params = teacher
    ids, am, dids, dam = _batch(cfg.vocab_size)
    q = QuantConfig(2, 2, None, method="tbt")
    kernel = params["encoder"]["layers_0"]["fc1"]["kernel"]  # [in, out]
    fq = export.fake_quantized_params(params, q)["encoder"]["layers_0"]["fc1"]["kernel"]
    # Flax [in, out] with reduce_axes=(0,) is PyTorch's [out, in] per row
    np.testing.assert_array_equal(fq, np.asarray(quant.tbt_ternary(kernel.T)).T)
    for col in range(3):
        w = kernel[:, col]
        alpha = np.float32(4 / 3) * np.mean(np.abs(w), dtype=np.float32)
        assert set(np.unique(fq[:, col] / alpha).round(5)) <= {-1.0, 0.0, 1.0}
    # the student's forward uses exactly these weights
    ours = modeling.Seq2SeqLM(cfg, q).apply({"params": params}, ids, am, dids, dam).logits
    fq_all = export.fake_quantized_params(params, q)
    head_fp = dict(fq_all, shared={"embedding": params["shared"]["embedding"]})  # reference: fp32 head
    again = (
        modeling.Seq2SeqLM(cfg.replace(tie_word_embeddings=False))
        .apply(
            {"params": dict(head_fp, shared=fq_all["shared"], lm_head={"kernel": params["shared"]["embedding"].T})},
            ids,
            am,
            dids,
            dam,
        )
        .logits
    )
    np.testing.assert_allclose(np.asarray(ours), np.asarray(again), atol=1e-5, rtol=0)


def test_step_sizes_train_replicated_and_checkpointable(teacher):
    cfg, params = teacher
    ids, am, dids, dam = (np.asarray(a) for a in _batch(cfg.vocab_size))
    scfg, sparams = distill.init_student(cfg, params, 2, 1)
    student = modeling.Seq2SeqLM(scfg, QuantConfig(2, 2, 2, method="tbt"))
    sparams = modeling.init_elastic(student, sparams, ids, am, dids)
    labels = np.where(dam == 1, np.roll(dids, -1, axis=1), -100)
    batch = {
        k: v[None]
        for k, v in dict(
            input_ids=ids, attention_mask=am, decoder_input_ids=dids, decoder_attention_mask=dam, labels=labels
        ).items()
    }
    dcfg = distill.DistillConfig(encoder_map=(0, 1), decoder_map=(1,))
    tx = train_step.make_optimizer(
        train_step.OptimConfig(learning_rate=1e-2, total_steps=10, weight_decay=0.1), sparams
    )
    mesh = sharding.make_mesh((2, 2, 2))
    state, st_sh = train_step.init_state(sparams, tx, jax.random.key(0), mesh)
    for leaf in jax.tree.leaves(state.params[ELASTIC]):
        assert leaf.sharding.is_fully_replicated
    t_sh = sharding.param_shardings(params, mesh)
    step = train_step.compile_step(
        train_step.make_train_step(student, modeling.Seq2SeqLM(cfg), dcfg, tx), mesh, st_sh, t_sh
    )
    new, metrics = step(state, jax.device_put(params, t_sh), train_step.shard_batch(batch, mesh))
    assert np.isfinite(metrics["loss"]) and float(metrics["finite"]) == 1.0
    before = dict(hf_layout.flatten(jax.device_get(sparams[ELASTIC])))
    after = dict(hf_layout.flatten(jax.device_get(new.params[ELASTIC])))
    moved = [k for k in before if before[k] != after[k]]
    assert len(moved) > len(before) // 2  # learned, and by Adam (no weight decay on step sizes)
    assert all(after[k] > 0 for k in after)


def test_packed_w1a1_stores_1_bit_codes_and_step_sizes(teacher, tmp_path):
    cfg, params = teacher
    ids, am, dids, dam = _batch(cfg.vocab_size)
    q = QuantConfig(1, 1, 1, method="tbt", quantize_lm_head=True, compute="fake")  # compared with fake below
    model = modeling.Seq2SeqLM(cfg, q)
    p = modeling.init_elastic(model, params, ids, am, dids)
    path = packed.write(cfg, p, q, str(tmp_path / "w1a1.safetensors"))
    with safe_open(path, framework="np") as f:
        meta = json.loads(f.metadata()["quantized"])
        kernel_codes = f.get_tensor("model.encoder.layers.0.fc1.weight.codes")
        names = set(f.keys())
        stored = {k: f.get_tensor(k) for k in names if k.startswith("elastic.")}
    out_dim, in_dim = cfg.encoder_ffn_dim, cfg.d_model
    assert meta["model.encoder.layers.0.fc1.weight"] == {"shape": [out_dim, in_dim], "bits": 1, "kind": "tbt_binary"}
    assert kernel_codes.dtype == np.uint8 and kernel_codes.size == -(-out_dim * in_dim // 8)  # 8 per byte
    assert meta["model.shared.weight"]["bits"] == 1
    alphas = dict(hf_layout.flatten(p[ELASTIC]))
    assert len(stored) == len(alphas)
    for k, v in alphas.items():
        assert stored["elastic." + ".".join(k)] == v
    cfg2, q2, loaded = packed.load(path)
    assert q2 == q
    ours = model.apply(modeling.variables(p), ids, am, dids, dam).logits
    # the loaded weights are already quantized: run them with the activation quantizers only
    acts_only = dataclasses.replace(q2, weight_bits=None, embed_bits=None, quantize_lm_head=False)
    again = modeling.Seq2SeqLM(cfg2, acts_only).apply(modeling.variables(loaded), ids, am, dids, dam).logits
    np.testing.assert_array_equal(np.asarray(again), np.asarray(ours))
    # the HF export says PyTorch computes with full-precision activations, and keeps the step sizes
    export.export_hf(cfg, p, q, str(tmp_path / "hf"))
    note = json.loads((tmp_path / "hf" / "dq_jax.json").read_text())
    assert "full-precision activations" in note["activations"] and len(note["elastic"]) == len(alphas)


def test_tbt_presets_and_learning_rates():
    c = xsum.get_config("tbt=W1A8")
    assert (c.quant.method, c.quant.weight_bits, c.quant.embed_bits, c.quant.act_bits) == ("tbt", 1, 1, 8)
    assert c.train.learning_rate == 2.5e-4
    assert xsum.get_config("tbt=w2a2").train.learning_rate == 3.5e-4
    from configs import cnn_dm

    assert cnn_dm.get_config("tbt=W2A2").train.learning_rate == 7e-4
    assert cnn_dm.get_config("tbt=W1A1").quant.act_bits == 1
    assert demo.get_config("tbt=W2A8").train.learning_rate == demo.get_config().train.learning_rate
    with pytest.raises(ValueError, match="W1A1"):
        common.apply_variant(common.base_config(), "tbt=W3A8")
