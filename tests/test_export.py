"""Exports: HF directory, packed low-bit file, numpy-only conversion, size report."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

from dq_jax.export import hf_dir as export
from dq_jax.export import packed
from dq_jax.model import hf, hf_layout, modeling
from dq_jax.model.config import ModelConfig
from dq_jax.quant.config import QuantConfig
from tests.hf_models import make_hf_model, padded_batch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("student")
    make_hf_model("bart", vocab_size=120).save_pretrained(d)
    return hf.load_pretrained(str(d))


@pytest.mark.parametrize(
    "quant",
    [
        QuantConfig(2, 2, None),
        QuantConfig(8, 4, None, weight_granularity="row"),
        QuantConfig(2, 2, None, quantize_lm_head=True),
        QuantConfig(1, 1, None),
    ],
    ids=["2-2", "8-4-row", "2-2-tied-head", "1-1"],
)
def test_hf_export_matches_the_jax_student(student, quant, tmp_path):
    cfg, params = student
    export.export_hf(cfg, params, quant, str(tmp_path), generation_config={"num_beams": 4})
    torch_model, info = transformers.BartForConditionalGeneration.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert json.loads((tmp_path / "generation_config.json").read_text())["num_beams"] == 4
    ids, am, dids, dam = padded_batch(cfg.vocab_size)
    with torch.no_grad():
        theirs = torch_model.eval()(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(am),
            decoder_input_ids=torch.tensor(dids),
            decoder_attention_mask=torch.tensor(dam),
        ).logits
    ours = modeling.Seq2SeqLM(cfg, quant).apply({"params": params}, ids, am, dids, dam).logits
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4, rtol=0)
    # and the export loads back into JAX as a plain fp model with the same numbers
    cfg2, params2 = hf.load_pretrained(str(tmp_path))
    assert cfg2.tie_word_embeddings == (quant.quantize_lm_head or not quant.embed_bits)
    again = modeling.Seq2SeqLM(cfg2).apply({"params": params2}, ids, am, dids, dam).logits
    np.testing.assert_allclose(np.asarray(again), np.asarray(ours), atol=1e-5, rtol=0)


def test_activation_quantization_is_not_in_the_hf_export(student, tmp_path):
    """PyTorch has no activation quantizers: an 8-bit-activation student's export differs by
    the activation rounding alone (measured here; README documents it)."""
    cfg, params = student
    q = QuantConfig(2, 2, 8)
    export.export_hf(cfg, params, q, str(tmp_path))
    cfg2, params2 = hf.load_pretrained(str(tmp_path))
    batch = padded_batch(cfg.vocab_size)
    no_act = modeling.Seq2SeqLM(cfg2).apply({"params": params2}, *batch).logits
    with_act = modeling.Seq2SeqLM(cfg, q).apply({"params": params}, *batch).logits
    diff = float(np.abs(np.asarray(no_act) - np.asarray(with_act)).max())
    print(f"max |logits(2-2-8 student) - logits(HF export, no activation quantization)| = {diff:.4f}")
    assert 1e-4 < diff < 1.0


@pytest.mark.parametrize(
    "quant",
    [
        QuantConfig(2, 2, 8),
        QuantConfig(8, 8, 8),
        QuantConfig(4, 3, 8, method="symmetric"),
        QuantConfig(1, 1, 8),
        QuantConfig(8, 2, 8, weight_granularity="row"),
    ],
    ids=["2-2-8", "8-8-8", "4-3-8", "1-1-8", "8-2-8-row"],
)
def test_packed_round_trip_is_bit_exact(student, quant, tmp_path):
    cfg, params = student
    path = packed.write(cfg, params, quant, str(tmp_path / "s.safetensors"))
    cfg2, quant2, loaded = packed.load(path)
    assert quant2 == quant
    expected = export.fake_quantized_params(params, quant)
    if quant.embed_bits and not quant.quantize_lm_head:
        expected["lm_head"] = {"kernel": np.asarray(params["shared"]["embedding"]).T}
        assert not cfg2.tie_word_embeddings
    got, want = dict(hf_layout.flatten(loaded)), dict(hf_layout.flatten(expected))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == np.float32 and np.array_equal(got[k], want[k]), k
    # the student computes the same with the packed weights as with its fake quantizers
    batch = padded_batch(cfg.vocab_size)
    from_packed = modeling.Seq2SeqLM(cfg2, QuantConfig(act_bits=quant.act_bits, compute="fake")).apply(
        {"params": loaded}, *batch
    )
    # fake on both sides: the products on codes round differently from the float ones
    live = modeling.Seq2SeqLM(cfg, dataclasses.replace(quant, compute="fake")).apply({"params": params}, *batch)
    np.testing.assert_allclose(np.asarray(from_packed.logits), np.asarray(live.logits), atol=1e-5, rtol=0)


def test_packed_codes_really_are_low_bit(student, tmp_path):
    cfg, params = student
    path = packed.write(cfg, params, QuantConfig(2, 2, 8), str(tmp_path / "s.safetensors"))
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        codes = f.get_tensor("model.encoder.layers.0.fc1.weight.codes")
        meta = json.loads(f.metadata()["quantized"])
    assert codes.dtype == np.uint8 and codes.size == cfg.encoder_ffn_dim * cfg.d_model // 4
    assert meta["model.shared.weight"] == {"shape": [cfg.vocab_size, cfg.d_model], "bits": 2, "kind": "ternary"}


def test_packed_to_hf_uses_numpy_only_and_equals_the_hf_export(student, tmp_path):
    cfg, params = student
    q = QuantConfig(2, 2, 8)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer_config.json").write_text('{"model_max_length": 1024}')
    export.export_hf(cfg, params, q, str(tmp_path / "hf"), str(tok_dir), {"num_beams": 6})
    path = packed.write(cfg, params, q, str(tmp_path / "s.safetensors"), packed.Extras(str(tok_dir), {"num_beams": 6}))
    code = (
        "import sys; from dq_jax.export import packed; "
        f"packed.to_hf({path!r}, {str(tmp_path / 'from_packed')!r}); "
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    a, b = tmp_path / "hf", tmp_path / "from_packed"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_bad_packed_files_are_clear_errors(student, tmp_path):
    cfg, params = student
    path = packed.write(cfg, params, QuantConfig(2, 2, 8), str(tmp_path / "s.safetensors"))
    data = Path(path).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(packed.PackedFileError, match="truncated or corrupt"):
        packed.load(str(tmp_path / "cut.safetensors"))
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(path, "np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open handle)
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata=dict(meta, version="99"))
    with pytest.raises(packed.PackedFileError, match="version 99, newer than this dq-jax reads"):
        packed.load(str(tmp_path / "new.safetensors"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        packed.load(str(tmp_path / "missing.safetensors"))


def test_export_command_without_a_finished_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "train.export", "--workdir", str(tmp_path), "--format", "packed"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "has no finished student" in out.stderr and "run the distill stage first" in out.stderr


def test_size_report_reproduces_the_paper_table():
    from configs import xsum
    from train.settings import spec_from_config
    from train.size import report

    got = {}
    for variant in (
        "wbits=32,ebits=32,abits=32",
        "wbits=8,ebits=8,abits=8",
        "wbits=2,ebits=2,abits=8",
        "wbits=2,ebits=2,abits=8,layers=6-3",
        "wbits=2,ebits=2,abits=8,layers=1-1",
    ):
        t = report(spec_from_config(xsum.get_config(variant)))["totals"]
        got[variant] = (round(t["teacher_paper_mib"], 1), round(t["student_paper_mib"], 1), round(t["paper_ratio"], 1))
    assert got["wbits=32,ebits=32,abits=32"] == (532.0, 532.0, 1.0)
    assert got["wbits=8,ebits=8,abits=8"][1] == 138.1
    assert got["wbits=2,ebits=2,abits=8"][1] == 39.6
    assert got["wbits=2,ebits=2,abits=8,layers=6-3"][2] == 16.3
    assert got["wbits=2,ebits=2,abits=8,layers=1-1"][2] == 27.4


def _random_params(cfg, seed=0):
    ids = jax.numpy.zeros((1, 2), jax.numpy.int32)
    return jax.device_get(
        jax.jit(modeling.Seq2SeqLM(cfg).init)(jax.random.PRNGKey(seed), ids, decoder_input_ids=ids)["params"]
    )


@pytest.mark.parametrize("model_type", ["bart", "mbart"])
@pytest.mark.parametrize(
    "quant",
    [
        QuantConfig(2, 2, 8),
        QuantConfig(8, 8, 8, quantize_lm_head=True),
        QuantConfig(3, 4, 8, weight_granularity="row"),
        QuantConfig(8, None, 8),
        QuantConfig(1, 1, 1, method="tbt", quantize_lm_head=True),
    ],
    ids=["2-2-8", "8-8-8-tied", "3-4-8-row", "8-fp-8", "tbt-w1a1-tied"],
)
def test_packed_size_is_the_file_size_to_the_byte(quant, model_type, tmp_path):
    """`packed.file_bytes` from shapes alone equals the written file's size, header included:
    tokenizer files (non-ASCII text too), generation settings and the precision."""
    cfg = ModelConfig(
        model_type=model_type,
        vocab_size=512,
        d_model=64,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    )
    params = _random_params(cfg)
    trainable = modeling.abstract_trainable(cfg, quant)
    if "elastic" in trainable:  # TBT's step sizes are stored too
        params = dict(params, elastic=jax.tree.map(lambda s: np.float32(0.5), trainable["elastic"]))
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text('{"model_max_length": 1024, "note": "caf\u00e9 \\ "q""}')
    (tok / "vocab.json").write_text(json.dumps({"café": 0, "ü\n": 1}, ensure_ascii=False), encoding="utf-8")
    gen = {"num_beams": 4, "max_length": 62}
    extras = packed.Extras(str(tok), gen, "bf16")
    path = packed.write(cfg, params, quant, str(tmp_path / "s.safetensors"), extras)
    assert packed.file_bytes(cfg, trainable, quant, extras) == os.path.getsize(path)
    assert packed.read_header(path).precision == "bf16"


@pytest.mark.slow
def test_bart_base_packed_file_sizes(tmp_path):
    """BART-base shapes: the predicted packed size is the file's, and a 2-2-8 student with the
    tied head quantized is at least 12x smaller than the teacher's fp32 safetensors."""
    cfg = ModelConfig()
    params = _random_params(cfg)
    hf.save_pretrained(cfg, params, str(tmp_path / "teacher"))
    teacher_bytes = os.path.getsize(tmp_path / "teacher" / "model.safetensors")
    sizes = {}
    for name, q in (("fp32 head", QuantConfig(2, 2, 8)), ("tied head", QuantConfig(2, 2, 8, quantize_lm_head=True))):
        path = packed.write(cfg, params, q, str(tmp_path / f"{name}.safetensors"))
        actual = os.path.getsize(path)
        assert packed.file_bytes(cfg, modeling.abstract_params(cfg), q) == actual, name
        sizes[name] = actual
    print({k: f"{teacher_bytes / v:.1f}x" for k, v in sizes.items()}, f"teacher {teacher_bytes / 2**20:.1f} MiB")
    assert teacher_bytes / sizes["tied head"] >= 12
