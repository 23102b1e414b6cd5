"""Flax BART/mBART against HF PyTorch: parity, round trips, shapes, cache, bf16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from dq_jax.model import hf, hf_layout, modeling, pytorch_bin
from tests.hf_models import CONFIGS, make_hf_model, padded_batch, torch_forward


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    model = make_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return model, str(path)


def test_parity_with_hf_pytorch(saved):
    torch_model, path = saved
    cfg, params = hf.load_pretrained(path)
    ids, am, dids, dam = padded_batch(cfg.vocab_size)
    ref = torch_forward(torch_model, ids, am, dids, dam)
    out = modeling.Seq2SeqLM(cfg).apply(
        {"params": params}, ids, am, dids, dam, output_hidden_states=True, output_attentions=True
    )
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=1e-4, rtol=0)
    pairs = {
        "encoder_hidden_states": (cfg.encoder_layers + 1, ref.encoder_hidden_states),
        "decoder_hidden_states": (cfg.decoder_layers + 1, ref.decoder_hidden_states),
        "encoder_attentions": (cfg.encoder_layers, ref.encoder_attentions),
        "decoder_attentions": (cfg.decoder_layers, ref.decoder_attentions),
        "cross_attentions": (cfg.decoder_layers, ref.cross_attentions),
    }
    for name, (n, theirs) in pairs.items():
        ours = getattr(out, name)
        assert len(ours) == len(theirs) == n, name
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert a.shape == tuple(b.shape), (name, i)
            np.testing.assert_allclose(a, b.numpy(), atol=1e-5, rtol=0, err_msg=f"{name}[{i}]")


def test_round_trip_is_bit_exact_and_loads_in_transformers(saved, tmp_path):
    torch_model, path = saved
    cfg, params = hf.load_pretrained(path)
    hf.save_pretrained(cfg, params, str(tmp_path))
    before, after = load_file(f"{path}/model.safetensors"), load_file(f"{tmp_path}/model.safetensors")
    assert sorted(before) == sorted(after)
    for k in before:
        assert before[k].dtype == after[k].dtype and np.array_equal(before[k], after[k]), k
    cls = type(torch_model)
    reloaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reloaded.config.to_dict()["model_type"] == cfg.model_type
    with open(f"{path}/config.json") as f:
        original = json.load(f)
    with open(f"{tmp_path}/config.json") as f:
        rewritten = json.load(f)
    for key, value in original.items():
        if key != "transformers_version":
            assert rewritten[key] == value, key


def test_pytorch_bin_checkpoint_loads(tmp_path):
    torch_model = make_hf_model("bart")
    torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
    torch_model.config.save_pretrained(tmp_path)
    _cfg, params = hf.load_pretrained(str(tmp_path))
    np.testing.assert_array_equal(params["shared"]["embedding"], torch_model.model.shared.weight.detach().numpy())
    np.testing.assert_array_equal(
        params["decoder"]["layers_1"]["fc2"]["kernel"],
        torch_model.model.decoder.layers[1].fc2.weight.detach().numpy().T,
    )


def test_pytorch_bin_is_read_without_torch_or_its_pickle_code(tmp_path):
    """`pytorch_model.bin` through numpy: every dtype a state dict holds, bf16 as fp32, views with
    offsets and strides, scalars; a pickle that names anything else is refused, torch never imported."""
    import subprocess
    import sys

    state = {
        "f": torch.randn(3, 4),
        "h": torch.randn(2, 3).half(),
        "b": torch.randn(5).to(torch.bfloat16),
        "t": torch.randn(4, 6).t(),
        "slice": torch.arange(20.0)[5:11],
        "i": torch.arange(7),
        "s": torch.tensor(2.5),
        "m": torch.tensor([True, False]),
    }
    torch.save(state, tmp_path / "state.bin")
    got = pytorch_bin.load_state_dict(str(tmp_path / "state.bin"))
    for k, v in state.items():
        want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        assert got[k].dtype == want.dtype and np.array_equal(got[k], want), k
    torch.save({"w": torch.nn.Linear(2, 2)}, tmp_path / "module.bin")  # pickles a class: not a state dict
    with pytest.raises(Exception, match="not part of a plain state dict"):
        pytorch_bin.load_state_dict(str(tmp_path / "module.bin"))
    code = (
        "import sys; from dq_jax.model import pytorch_bin; "
        f"pytorch_bin.load_state_dict({str(tmp_path / 'state.bin')!r}); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("model_type,cfg_cls", [("bart", transformers.BartConfig), ("mbart", transformers.MBartConfig)])
def test_full_size_param_count_matches_hf(model_type, cfg_cls):
    """BART-base and mBART-large shapes through eval_shape: no weights materialized."""
    shapes = dict(
        bart=dict(
            vocab_size=50265,
            d_model=768,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=12,
            decoder_attention_heads=12,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
        ),
        mbart=dict(
            vocab_size=250027,
            d_model=1024,
            encoder_layers=12,
            decoder_layers=12,
            encoder_attention_heads=16,
            decoder_attention_heads=16,
            encoder_ffn_dim=4096,
            decoder_ffn_dim=4096,
            scale_embedding=True,
        ),
    )[model_type]
    hf_cfg = cfg_cls(**shapes)
    with torch.device("meta"):
        torch_model = transformers.AutoModelForSeq2SeqLM.from_config(hf_cfg)
    cfg = modeling.ModelConfig.from_hf_dict(hf_cfg.to_dict())
    abstract = modeling.abstract_params(cfg)
    ours = {}
    for path, leaf in hf_layout.flatten(abstract):
        name, transposed = hf_layout.flax_to_hf_name(path)
        ours[name] = tuple(leaf.shape)[::-1] if transposed else tuple(leaf.shape)
    theirs = {
        k: tuple(v.shape)
        for k, v in torch_model.state_dict().items()
        if k not in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
    }
    assert ours == theirs
    n_ours = sum(int(np.prod(s)) for s in ours.values())
    n_params = sum(p.numel() for p in torch_model.parameters())  # tied embedding counted once
    n_buffers = sum(b.numel() for b in torch_model.buffers())  # final_logits_bias
    assert n_ours == n_params + n_buffers
    assert n_params == {"bart": 139420416, "mbart": 610851840}[model_type]


def test_incremental_decoding_matches_full_pass(saved):
    _, path = saved
    cfg, params = hf.load_pretrained(path)
    ids, am, dids, _ = padded_batch(cfg.vocab_size)
    model = modeling.Seq2SeqLM(cfg)
    v = {"params": params}
    enc = model.apply(v, ids, am, method=model.encode)
    full = model.apply(v, dids, enc.last_hidden_state, am, method=model.decode).logits
    cache = model.apply(v, enc.last_hidden_state, 10, method=model.init_cache)
    step = jax.jit(lambda c, tok: model.apply(v, tok, enc.last_hidden_state, am, cache=c, method=model.decode))
    # one token, then a chunk of two, then the rest one by one
    chunks, logits = [(0, 1), (1, 3)] + [(t, t + 1) for t in range(3, dids.shape[1])], []
    for a, b in chunks:
        out = step(cache, dids[:, a:b])
        cache = out.cache
        logits.append(out.logits)
    assert int(cache.index) == dids.shape[1]
    np.testing.assert_allclose(jnp.concatenate(logits, axis=1), full, atol=1e-5, rtol=0)


def test_bf16_compute_close_to_fp32(saved):
    """bf16 compute (fp32 params, softmax and layer-norm statistics): logits within 0.05 of fp32."""
    _, path = saved
    cfg, params = hf.load_pretrained(path)
    ids, am, dids, dam = padded_batch(cfg.vocab_size)
    f32 = modeling.Seq2SeqLM(cfg).apply({"params": params}, ids, am, dids, dam)
    b16 = modeling.Seq2SeqLM(cfg, dtype=jnp.bfloat16).apply({"params": params}, ids, am, dids, dam)
    assert b16.logits.dtype == jnp.float32 and b16.encoder_last_hidden_state.dtype == jnp.bfloat16
    err = float(jnp.abs(b16.logits - f32.logits).max())
    assert 0 < err < 0.05, err


def test_dropout_is_active_only_when_not_deterministic(saved):
    _, path = saved
    cfg, params = hf.load_pretrained(path)
    cfg = cfg.replace(dropout=0.3, attention_dropout=0.2, activation_dropout=0.1)
    ids, am, dids, dam = padded_batch(cfg.vocab_size)
    model = modeling.Seq2SeqLM(cfg)
    run = lambda det, seed: (
        model.apply(
            {"params": params}, ids, am, dids, dam, deterministic=det, rngs={"dropout": jax.random.key(seed)}
        ).logits
    )
    np.testing.assert_array_equal(run(True, 0), run(True, 1))
    assert not np.allclose(run(False, 0), run(False, 1))
    assert not np.allclose(run(False, 0), run(True, 0))


def test_not_a_bart_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 10, "d_model": 8}))
    with pytest.raises(ValueError, match=r"model_type='t5'.*BART or mBART"):
        hf.load_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        hf.load_pretrained(str(tmp_path / ".."))


def test_missing_tensor_is_a_clear_error(saved, tmp_path):
    _, path = saved
    sd = load_file(f"{path}/model.safetensors")
    del sd["model.encoder.layers.1.fc1.weight"]
    from safetensors.numpy import save_file

    save_file(sd, tmp_path / "model.safetensors")
    with open(f"{path}/config.json") as f:
        (tmp_path / "config.json").write_text(f.read())
    with pytest.raises(ValueError, match=r"missing.*encoder/layers_1/fc1/kernel"):
        hf.load_pretrained(str(tmp_path))


def test_offline_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hugging Face hub"):
        hf.load_pretrained("facebook/bart-base-that-is-not-cached")
