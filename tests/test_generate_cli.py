"""Generating from a finished student: the packed loader (codes resident, never fp32) and
`python -m train.generate` on a workdir and on a packed file."""

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from dq_jax.data import demo_task
from dq_jax.export import packed
from dq_jax.export.workdir import export_workdir, save_student
from dq_jax.inference import loading as inference
from dq_jax.inference import text
from dq_jax.inference.generate import generate
from dq_jax.inference.generation_config import GenerationConfig
from dq_jax.inference.quantized_model import quantized_student
from dq_jax.model import hf, hf_layout
from dq_jax.model.modeling import Seq2SeqLM
from dq_jax.quant.codes import Codes
from dq_jax.quant.config import QuantConfig
from tests.hf_models import make_hf_model
from train import generate as generate_cli

REPO = Path(__file__).resolve().parents[1]
QUANT = QuantConfig(2, 2, 8)  # the demo's student: ternary weights and table, fp32 LM head copy


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run's workdir (student_hf/ as the pipeline saves it) and its packed export:
    a tiny random BART over a demo-task tokenizer, plus an input file of short documents, a
    blank line and one document longer than the model's 32 source positions."""
    d = tmp_path_factory.mktemp("run")
    rows = demo_task.make_split(200, 0)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok_dir = demo_task.train_tokenizer([str(d / "train.jsonl")], str(d / "tokenizer"))
    model = make_hf_model("bart", vocab_size=len(hf.load_tokenizer(tok_dir)))
    model.final_logits_bias.zero_()  # so that outputs depend on the input, not on one bias
    model.save_pretrained(d / "teacher")
    cfg, params = hf.load_pretrained(str(d / "teacher"))
    gen = GenerationConfig.from_model_config(cfg, num_beams=2, max_length=10, min_length=2, no_repeat_ngram_size=3)
    save_student(cfg, params, QUANT, str(d / "work" / "student_hf"), tok_dir, gen.to_hf_dict())
    packed = export_workdir(str(d / "work"), "packed")["path"]
    lines = [r["summary"] for r in rows[:3]] + [""] + [rows[3]["summary"], rows[4]["document"]]
    (d / "docs.txt").write_text("\n".join(lines) + "\n")
    return dict(
        dir=d,
        cfg=cfg,
        params=params,
        gen=gen,
        workdir=str(d / "work"),
        packed=packed,
        docs=str(d / "docs.txt"),
        lines=lines,
        tokenizer=tok_dir,
    )


def _leaves(tree):
    return dict(hf_layout.flatten(tree))  # Codes are leaves: flatten walks dicts only


@pytest.mark.parametrize(
    "quant",
    [
        QUANT,
        QuantConfig(8, 4, 8, weight_granularity="row"),
        QuantConfig(2, 2, None, quantize_lm_head=True),
        QuantConfig(1, 1, 8),
        QuantConfig(4, 3, 8, method="symmetric"),
        QuantConfig(2, 2, 8, method="tbt"),
    ],
    ids=["2-2-8", "8-4-8-row", "2-2-tied-head", "1-1-8", "4-3-8", "tbt-2-2-8"],
)
def test_packed_codes_equal_the_quantized_students(run, quant, tmp_path):
    cfg, params = run["cfg"], run["params"]
    path = packed.write(cfg, params, quant, str(tmp_path / "s.safetensors"))
    cfg2, header, got = packed.read_codes(path)
    quant2 = header.quant
    model, want = quantized_student(cfg, quant, params)
    assert quant2 == quant and cfg2 == model.cfg
    got, want = _leaves(got), _leaves(want)
    assert got.keys() == want.keys()
    n_codes = 0
    for k, w in want.items():
        g = got[k]
        assert isinstance(g, Codes) == isinstance(w, Codes), k
        if isinstance(w, Codes):
            n_codes += 1
            assert (g.bits, g.axes, g.offset) == (w.bits, w.axes, None), k
            assert g.values.dtype == np.int8 and g.scales.dtype == np.float32, k
            np.testing.assert_array_equal(g.values, np.asarray(w.values), err_msg=str(k))
            np.testing.assert_array_equal(g.scales, np.asarray(w.scales), err_msg=str(k))
        else:
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=str(k))
    assert n_codes == 1 + 6 * cfg.encoder_layers + 10 * cfg.decoder_layers  # table + every Linear kernel


def test_the_packed_file_loads_without_dequantizing(run, monkeypatch):
    """The fp32 weights of quantized tensors are never built: the dequantizing readers are not called."""

    def boom(*a, **k):
        raise AssertionError("the packed loader dequantized the file")

    monkeypatch.setattr(packed, "read_state_dict", boom)
    monkeypatch.setattr(packed, "load", boom)
    student = inference.load(run["packed"])
    assert student.kind == inference.PACKED and student.generation == run["gen"]
    assert student.model.quant.compute == "codes"
    kernel = student.params["encoder"]["layers_0"]["fc1"]["kernel"]
    assert isinstance(kernel, Codes) and kernel.values.dtype == np.int8
    codes = [c for c in _leaves(student.params).values() if isinstance(c, Codes)]
    # one byte per code instead of four, plus the scales; every other tensor as in fp32
    assert student.resident_bytes == (
        student.fp32_bytes - 3 * sum(c.values.size for c in codes) + sum(c.scales.nbytes for c in codes)
    )


def test_a_bf16_run_generates_in_bf16(run, tmp_path):
    save_student(
        run["cfg"],
        run["params"],
        QUANT,
        str(tmp_path / "student_hf"),
        run["tokenizer"],
        run["gen"].to_hf_dict(),
        precision="bf16",
    )
    student = inference.load(str(tmp_path))
    assert student.kind == inference.WORKDIR and student.model.dtype == jnp.bfloat16
    assert inference.load(run["packed"]).model.dtype == jnp.float32


def test_generation_from_the_packed_file_equals_the_training_student(run):
    student = inference.load(run["packed"])  # products on codes, as the command line runs it
    encoded = text.encode(student, run["lines"])
    assert encoded.ids[3] is None and encoded.truncated == 1  # the blank line; the long document:
    assert len(encoded.ids[5]) == 32 and encoded.ids[5][-1] == student.tokenizer.eos_token_id
    rows = [x for x in encoded.ids if x is not None]
    # [5, 32]: the shape the command line's batches of 5 take, so its test reuses this compilation
    ids = np.full((len(rows), encoded.max_tokens), student.generation.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    trained = generate(Seq2SeqLM(run["cfg"], QUANT), run["params"], ids, mask, run["gen"])
    packed = generate(student.model, student.params, ids, mask, student.generation)
    np.testing.assert_array_equal(np.asarray(packed.sequences), np.asarray(trained.sequences))
    # the random tiny model often says the same thing whatever the input; its scores do depend on it
    np.testing.assert_allclose(np.asarray(packed.scores), np.asarray(trained.scores), rtol=1e-5, atol=0)
    assert len(set(np.asarray(trained.scores).round(4).tolist())) == len(rows)


def test_cli_on_a_workdir_and_on_a_packed_file(run, capsys):
    out_dir = run["dir"]
    assert (
        generate_cli.main(
            [
                "train.generate",
                "--model",
                run["workdir"],
                "--input",
                run["docs"],
                "--output",
                str(out_dir / "from_workdir.txt"),
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.err.count("warning:") == 1
    assert "warning: 1 of 6 lines are longer than the model's 32 source positions and were truncated." in captured.err
    assert "generate: 100%" in captured.err  # the progress bar
    assert "tokens/s" in captured.out and "weights resident:" in captured.out and "in fp32" in captured.out
    from_workdir = (out_dir / "from_workdir.txt").read_text().split("\n")
    assert from_workdir[-1] == "" and len(from_workdir[:-1]) == len(run["lines"])
    assert from_workdir[3] == "" and all(from_workdir[i] for i in (0, 1, 2, 4, 5))
    # the packed file, through the real command line, in the same batches (a per-tensor activation
    # scale makes a document's output depend on the batch it is in)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.generate",
            "--model",
            run["packed"],
            "--input",
            run["docs"],
            "--output",
            str(out_dir / "from_packed.txt"),
            "--batch-size",
            "5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out_dir / "from_packed.txt").read_text() == (out_dir / "from_workdir.txt").read_text()


def _error(capsys, argv):
    rc = generate_cli.main(["train.generate", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_errors_come_before_any_work(run, tmp_path, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("weights were loaded before the checks")

    monkeypatch.setattr(inference, "load", no_load)
    out = str(tmp_path / "out.txt")
    common = ["--input", run["docs"], "--output", out]
    assert "does not exist" in _error(capsys, ["--model", str(tmp_path / "nope"), *common])
    (tmp_path / "empty_dir").mkdir()
    assert "without a finished student" in _error(capsys, ["--model", str(tmp_path / "empty_dir"), *common])
    assert "neither a workdir with a finished student nor a dq-jax packed file" in _error(
        capsys, ["--model", run["docs"], *common]
    )
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(Path(run["packed"]).read_bytes()[:1000])
    assert "truncated or corrupt" in _error(capsys, ["--model", str(cut), *common])
    assert "input file" in _error(
        capsys, ["--model", run["packed"], "--input", str(tmp_path / "no.txt"), "--output", out]
    )
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    assert "no non-blank lines" in _error(
        capsys, ["--model", run["workdir"], "--input", str(tmp_path / "blank.txt"), "--output", out]
    )
    assert not (tmp_path / "out.txt").exists()


def _no_load(*a, **k):
    raise AssertionError("the model was read before the flags were checked")


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--batch-size=0", "error: --batch-size must be >= 1, got 0."),
        ("--num-beams=0", "error: --num-beams must be >= 1, got 0."),
        ("--num-beams=-2", "error: --num-beams must be >= 1, got -2."),
        (
            "--max-length=1",
            "error: --max-length must be >= 2 (it counts the decoder start token: 2 is one generated token), got 1.",
        ),
    ],
)
def test_bad_generation_flags_fail_right_after_parsing(run, tmp_path, capsys, monkeypatch, flag, message):
    monkeypatch.setattr(inference, "load", _no_load)
    monkeypatch.setattr(inference, "model_kind", _no_load)
    out = str(tmp_path / "out.txt")
    for model in (run["packed"], str(tmp_path / "nope")):  # the flags are checked before the model is looked at
        assert _error(capsys, ["--model", model, "--input", run["docs"], "--output", out, flag]) == message
    assert not (tmp_path / "out.txt").exists()


def test_max_length_must_leave_room_for_the_runs_min_length(run, tmp_path, capsys):
    out = tmp_path / "out.txt"  # the run generates at least min_length=2 tokens, the start token included
    assert "min_length" in _error(
        capsys, ["--model", run["packed"], "--input", run["docs"], "--output", str(out), "--max-length", "2"]
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus"], "error: Unknown command line flag 'bogus' (--help lists the flags)."),
        (["--batch-size", "two"], "error: flag --batch-size=two: invalid literal for int() with base 10: 'two'"),
        (["--compute", "fp32"], "error: flag --compute=fp32: value should be one of <codes|fake>"),
        (["docs.txt"], "error: unexpected arguments ['docs.txt']: every argument is a --flag (--help lists them)."),
    ],
)
def test_flag_mistakes_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        generate_cli.main(["train.generate", "--model", "m", "--input", "i", "--output", "o", *argv])
    assert e.value.code == 2 and capsys.readouterr().err == message + "\n"
    with pytest.raises(SystemExit) as e:
        generate_cli.main(["train.generate", "--input", "i", "--output", "o"])
    assert e.value.code == 2 and capsys.readouterr().err == "error: --model is required (--help lists the flags).\n"


def test_help_lists_the_flags_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        generate_cli.main(["train.generate", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("Generates with a finished student")
    assert all(
        f"--{name}:" in out for name in ("model", "input", "output", "batch-size", "num-beams", "max-length", "compute")
    )
