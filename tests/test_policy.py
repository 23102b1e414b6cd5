"""The quantization policy: parameter roles and logical axes at BART-base shapes, the rules each
QuantConfig gives, and the typed codes they produce."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax import quant
from dq_jax.model import hf_layout, modeling
from dq_jax.model.config import ModelConfig
from dq_jax.quant import policy
from dq_jax.quant.codes import Codes
from dq_jax.quant.config import QuantConfig
from dq_jax.quant.policy import ActRole, Role


def _roles(params) -> dict[tuple[str, ...], policy.ParamInfo]:
    return {path: policy.classify(path, len(leaf.shape)) for path, leaf in hf_layout.flatten(params)}


def test_every_bart_base_parameter_has_its_role_and_axes():
    infos = _roles(modeling.abstract_params(ModelConfig()))
    by_role: dict[Role, int] = {}
    for info in infos.values():
        by_role[info.role] = by_role.get(info.role, 0) + 1
    # 6+6 layers: encoder 6 Linear kernels per layer, decoder 10; biases likewise; norms
    # 2 (scale, bias) x (2 per encoder layer, 3 per decoder layer, 2 embedding norms).
    assert by_role == {
        Role.LINEAR: 6 * 6 + 6 * 10,
        Role.BIAS: 6 * 6 + 6 * 10,
        Role.NORM: 2 * (12 + 18 + 2),
        Role.TOKEN_EMBEDDING: 1,
        Role.POSITIONS: 2,
        Role.LOGITS_BIAS: 1,
    }
    get = lambda *p: infos[p]
    assert get("shared", "embedding") == policy.ParamInfo(Role.TOKEN_EMBEDDING, ("vocab", "embed"))
    assert get("encoder", "layers_0", "self_attn", "q_proj", "kernel").logical_axes == ("embed", "heads")
    assert get("decoder", "layers_5", "encoder_attn", "v_proj", "bias").logical_axes == ("heads",)
    assert get("decoder", "layers_1", "self_attn", "out_proj", "kernel").logical_axes == ("heads", "embed")
    assert get("encoder", "layers_2", "fc1", "kernel").logical_axes == ("embed", "mlp")
    assert get("encoder", "layers_2", "fc2", "kernel").logical_axes == ("mlp", "embed")
    assert get("encoder", "layers_2", "fc2", "bias").role is Role.BIAS
    assert get("decoder", "layernorm_embedding", "scale").role is Role.NORM
    assert get("encoder", "embed_positions", "embedding").logical_axes == ("positions", "embed")
    assert get("final_logits_bias") == policy.ParamInfo(Role.LOGITS_BIAS, (None, "vocab"))


def test_training_masks_follow_the_roles():
    assert not policy.classify(("final_logits_bias",), 2).trainable
    decays = {r: policy.ParamInfo(r, ()).decays for r in Role}
    assert [r for r, d in decays.items() if d] == [Role.LINEAR, Role.LM_HEAD, Role.TOKEN_EMBEDDING, Role.POSITIONS]
    step = policy.classify(("elastic", "encoder", "layers_0", "fc1", "act", "alpha"), 0)
    assert step.role is Role.STEP_SIZE and step.trainable and not step.decays
    assert policy.classify(("lm_head", "kernel"), 2).logical_axes == ("embed", "vocab")


@pytest.mark.parametrize(
    "method, bits, kind, storage",
    [
        ("dq_bart", 1, "binary", 1),
        ("dq_bart", 2, "ternary", 2),
        ("dq_bart", 3, "symmetric", 4),
        ("dq_bart", 5, "symmetric", 8),
        ("dq_bart", 8, "symmetric", 8),
        ("symmetric", 2, "symmetric", 2),
        ("mse", 4, "mse", 4),
        ("binary", 1, "binary", 1),
        ("tbt", 2, "tbt_ternary", 2),
        ("tbt", 1, "tbt_binary", 1),
    ],
)
def test_weight_rules_by_method_and_bits(method, bits, kind, storage):
    q = QuantConfig(weight_bits=bits, embed_bits=bits, method=method)
    linear = policy.weight_rule(Role.LINEAR, q)
    embed = policy.weight_rule(Role.TOKEN_EMBEDDING, q)
    assert (linear.kind, linear.bits, linear.storage_bits) == (kind, bits, storage)
    assert linear.reduce_axes == ((0,) if method == "tbt" else None)  # TBT is always per output row
    assert embed.kind == kind and embed.reduce_axes == (-1,)
    for role in (Role.LM_HEAD, Role.POSITIONS, Role.NORM, Role.BIAS, Role.LOGITS_BIAS, Role.STEP_SIZE):
        assert policy.weight_rule(role, q) is None
    assert policy.tied_lm_head_rule(q) is None and policy.fp32_lm_head_copy(q)


def test_rules_follow_the_config():
    q = QuantConfig(
        weight_bits=4,
        embed_bits=None,
        act_bits=8,
        weight_granularity="row",
        act_scale="example",
        weight_clip=1.5,
        act_clip=3.0,
        mse_steps=2,
        method="mse",
    )
    assert policy.weight_rule(Role.LINEAR, q) == policy.WeightRule("mse", 4, (0,), 1.5, 2)
    assert policy.weight_rule(Role.TOKEN_EMBEDDING, q) is None and not policy.fp32_lm_head_copy(q)
    assert policy.param_rule(("decoder", "layers_0", "fc1", "kernel"), 2, q) == policy.weight_rule(Role.LINEAR, q)
    assert policy.param_rule(("decoder", "layers_0", "fc1", "bias"), 1, q) is None
    head = QuantConfig(weight_bits=2, embed_bits=4, quantize_lm_head=True)
    assert policy.tied_lm_head_rule(head) == policy.weight_rule(Role.TOKEN_EMBEDDING, head)
    assert not policy.fp32_lm_head_copy(head)
    assert policy.weight_rule(Role.LINEAR, None) is None and policy.act_rule(ActRole.QUERY, None) is None


def test_activation_rules():
    q = QuantConfig(act_bits=8, act_scale="example")
    rules = {r: policy.act_rule(r, q) for r in ActRole}
    assert all(r.bits == 8 and r.per_example and not r.elastic and r.clip == 2.5 for r in rules.values())
    assert [r for r, rule in rules.items() if not rule.signed] == [ActRole.FFN_HIDDEN, ActRole.PROBS]
    tbt = QuantConfig(weight_bits=2, embed_bits=2, act_bits=2, method="tbt")
    rule = policy.act_rule(ActRole.PROBS, tbt)
    assert rule.elastic and not rule.signed
    x = jnp.array([[0.1, 0.5], [0.9, 0.2]], jnp.float32)
    np.testing.assert_array_equal(rule.fake(x, jnp.float32(0.5)), quant.elastic(x, 0.5, 2, signed=False))
    assert float(rule.init_step_size(x)) == float(quant.elastic_init(x, 2, signed=False))
    assert policy.act_rule(ActRole.QUERY, QuantConfig(weight_bits=2)) is None


@pytest.mark.parametrize(
    "q",
    [
        QuantConfig(weight_bits=2, embed_bits=2),
        QuantConfig(weight_bits=8, embed_bits=3),
        QuantConfig(weight_bits=4, embed_bits=4, method="mse", weight_granularity="row"),
        QuantConfig(weight_bits=1, embed_bits=2, method="tbt"),
    ],
)
def test_rule_codes_are_typed_and_reproduce_the_fake_quantizer(q):
    w = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
    for role in (Role.LINEAR, Role.TOKEN_EMBEDDING):
        rule = policy.weight_rule(role, q)
        c = rule.codes(w)
        assert isinstance(c, Codes) and c.values.dtype == jnp.int8 and c.scales.dtype == jnp.float32
        assert c.bits == rule.bits if rule.kind in ("symmetric", "mse") else c.bits == rule.storage_bits
        assert np.abs(np.asarray(c.values, np.int32)).max() <= max(2 ** (c.bits - 1) - 1, 1)
        np.testing.assert_array_equal(quant.dequantize(c), rule.fake(w))
        assert c.granularity == {None: "tensor", (0,): "axes0", (-1,): "row"}[rule.reduce_axes]


def test_codes_are_a_pytree_with_static_bits_and_axes():
    c = quant.symmetric_codes(jnp.arange(12, dtype=jnp.float32).reshape(3, 4), 4, reduce_axes=-1)
    assert (c.bits, c.axes, c.shape, c.granularity, c.scales.shape) == (4, (1,), (3, 4), "row", (3, 1))
    leaves, _treedef = jax.tree.flatten(c)
    assert len(leaves) == 2
    doubled = jax.jit(lambda c: jax.tree.map(lambda a: a * 2, c))(c)
    assert isinstance(doubled, Codes) and (doubled.bits, doubled.axes) == (4, (1,))
    np.testing.assert_array_equal(doubled.scales, 2 * c.scales)
    assert quant.ternary_codes(jnp.ones((2, 3))).granularity == "tensor"
    assert quant.binary_codes(jnp.ones((2, 3)), reduce_axes=-1).bits == 1
