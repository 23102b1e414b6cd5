"""The benchmarks' bookkeeping (CPU record, speed-ups, sequence comparison) and the CTranslate2
conversion `bench.generate` runs its peer on."""

import dataclasses

import numpy as np
import pytest

from bench import common
from bench.generate import agreement
from bench.generate_workers import generated

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
bogomips\t: 4000.00

processor\t: 1
model name\t: Some Other CPU
flags\t\t: fpu
"""


def test_parse_cpuinfo_reads_the_first_processor():
    model, flags = common.parse_cpuinfo(CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == {"amx_int8": True, "amx_bf16": True, "avx512_bf16": True, "avx512_vnni": True}


def test_parse_cpuinfo_flags_are_whole_words():
    # "avx512_bf16x" is not "avx512_bf16"; a missing flags line means no flags
    _, flags = common.parse_cpuinfo("model name : AMD EPYC\nflags : avx512f avx512_bf16x avx512_vnni\n")
    assert flags == {"amx_int8": False, "amx_bf16": False, "avx512_bf16": False, "avx512_vnni": True}
    assert common.parse_cpuinfo("processor : 0\n") == ("unknown", dict.fromkeys(common.CPU_FLAGS, False))


def test_cpu_record_and_line():
    rec = common.cpu({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"})
    assert set(rec) == {"model", "flags", "cores", "usable_cores", "allocator"}
    assert set(rec["flags"]) == set(common.CPU_FLAGS) and rec["allocator"] == "tcmalloc"
    assert common.cpu({})["allocator"] == "glibc"
    line = common.cpu_line(
        dict(rec, flags={"amx_int8": False, "amx_bf16": False, "avx512_bf16": True, "avx512_vnni": True})
    )
    assert "flags: avx512_bf16 avx512_vnni (no amx_int8 amx_bf16)" in line and line.endswith("allocator tcmalloc")


def test_worker_env_preloads_tcmalloc_when_installed(monkeypatch):
    monkeypatch.setattr(common, "tcmalloc", lambda: "/lib/libtcmalloc_minimal.so.4")
    monkeypatch.setenv("LD_PRELOAD", "/lib/other.so")
    assert common.worker_env()["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4:/lib/other.so"
    monkeypatch.setattr(common, "tcmalloc", lambda: None)
    assert common.worker_env()["LD_PRELOAD"] == "/lib/other.so"


def test_speedups_are_peer_time_over_ours_for_measured_pairs():
    out = common.speedups({"codes/bf16": 0.5, "codes/fp32": None}, {"torch/fp32": 1.5, "torch/bf16": float("nan")})
    assert out == {"codes/bf16 vs torch/fp32": 3.0}


def test_quant_config_passes_compute_only_when_the_field_exists():
    from dq_jax.quant.config import QuantConfig

    assert common.quant_config((2, 2, 8), "fake") == QuantConfig(2, 2, 8, compute="fake")
    has_field = "compute" in {f.name for f in dataclasses.fields(QuantConfig)}
    assert (common.compute_unavailable("codes") is None) == has_field
    if has_field:
        assert common.quant_config((2, 2, 8), "codes").compute == "codes"
    else:
        with pytest.raises(RuntimeError, match="no `compute` field"):
            common.quant_config((2, 2, 8), "codes")


def test_generated_tokens_stop_at_eos_and_drop_padding():
    seqs = np.array([[2, 5, 6, 2, 1, 1], [2, 7, 8, 9, 10, 11], [2, 5, 1, 1, 1, 1]])
    assert generated(seqs, eos=2, pad=1) == [[5, 6, 2], [7, 8, 9, 10, 11], [5]]


def test_agreement_counts_identical_sequences_and_shared_prefixes():
    ref = [[5, 6, 7, 2], [5, 6, 7, 8]]
    assert agreement([[5, 6, 7, 2], [5, 9, 9, 9]], ref) == "1/2 62%"  # (4/4 + 1/4) / 2
    assert agreement(ref, None) == "-"


def test_ctranslate2_conversion_reproduces_hf_generate(tmp_path):
    """The converter workaround: a transformers-5 BART converts, and CTranslate2 in float32
    decodes what HF `generate` decodes, greedy (an immediate EOS included) and beam search.
    Beam search is compared without n-gram bans: CTranslate2 scores beams differently once an
    n-gram is banned (see bench.generate), greedy is compared with them."""
    ct2 = pytest.importorskip("ctranslate2")
    import torch
    import transformers

    from bench.generate_setup import SPECIAL, convert_ct2, word_tokenizer

    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        max_position_embeddings=64,
        init_std=0.2,
        forced_eos_token_id=None,
    )
    model = transformers.BartForConditionalGeneration(cfg).eval()
    model.save_pretrained(tmp_path / "hf")
    word_tokenizer(cfg.vocab_size, str(tmp_path / "hf"))
    convert_ct2(str(tmp_path / "hf"), str(tmp_path / "ct2"), "float32")
    translator = ct2.Translator(str(tmp_path / "ct2"), device="cpu", compute_type="float32")
    ids = np.random.RandomState(0).randint(len(SPECIAL), cfg.vocab_size, (4, 10))
    source = [[f"t{i}" for i in row] for row in ids.tolist()]
    for beams, ngram in ((1, 3), (4, 0)):
        with torch.no_grad():
            theirs = model.generate(
                torch.tensor(ids),
                num_beams=beams,
                do_sample=False,
                max_length=12,
                min_length=0,
                no_repeat_ngram_size=ngram,
                length_penalty=1.0,
                early_stopping=True,
            )
        res = translator.translate_batch(
            source,
            beam_size=beams,
            max_decoding_length=11,
            min_decoding_length=0,
            no_repeat_ngram_size=ngram,
            length_penalty=1.0,
            return_end_token=True,
        )
        ours = [[int(t[1:]) if t.startswith("t") else SPECIAL.index(t) for t in r.hypotheses[0]] for r in res]
        hf_tokens = generated(theirs.numpy(), cfg.eos_token_id, cfg.pad_token_id)
        assert len({tuple(s) for s in hf_tokens}) > 1  # inputs decode differently: a real comparison
        assert ours == hf_tokens
