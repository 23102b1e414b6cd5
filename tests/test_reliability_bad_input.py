"""Bad input to a run (settings, data files, teacher, tokenizer) is one clear error, named before
any training starts."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def xsum_setup(shared_data, tmp_path_factory):
    """Local XSum files and a small random BART teacher with the real tokenizer beside it."""
    import transformers

    d = tmp_path_factory.mktemp("xsum_setup")
    rows = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:48]]
    for split, part in (("train", rows[:32]), ("validation", rows[32:40]), ("test", rows[40:48])):
        (d / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in part) + "\n")
    (d / "empty.jsonl").write_text("")
    (d / "latin1.jsonl").write_bytes('{"document": "caf\xe9", "summary": "x"}\n'.encode("latin-1"))
    teacher = d / "teacher"
    cfg = transformers.BartConfig(
        vocab_size=50265,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=256,
    )
    transformers.BartForConditionalGeneration(cfg).save_pretrained(teacher)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (teacher / name).write_bytes((shared_data / "tokenizers" / "bart-base_roberta-base" / name).read_bytes())
    return d


def _xsum_cli(setup: Path, work: Path, *overrides, devices: int = 1):
    base = [
        f"--config.teacher.path={setup / 'teacher'}",
        "--config.data.name=",
        f"--config.data.train_files={setup / 'train.jsonl'}",
        f"--config.data.validation_files={setup / 'validation.jsonl'}",
        f"--config.data.test_files={setup / 'test.jsonl'}",
        "--config.teacher.finetune=False",
        "--config.stages=distill",
        "--config.train.steps=2",
        "--config.data.max_source_length=64",
    ]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "train.main",
            "--config",
            "configs/xsum.py:layers=2-1",
            "--workdir",
            str(work),
            *base,
            *overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"),
        timeout=300,
    )


BAD_INPUT = {
    "bits": (["--config.quant.weight_bits=9"], "quant.weight_bits=9 is not supported by quant.method='dq_bart'"),
    "method": (["--config.quant.method=int4"], "quant.method='int4' is not supported"),
    "act_bits": (["--config.quant.act_bits=1"], "quant.act_bits=1 has no activation quantizer"),
    "layer_map": (["--config.student.encoder_map=0,7"], "encoder layer map (0, 7) has index 7"),
    "missing_file": (["--config.data.test_files=/nonexistent/test.jsonl"], "/nonexistent/test.jsonl does not exist"),
    "missing_column": (["--config.data.source_column=article"], "Column 'article' not found"),
    "empty_split": (["--config.data.test_files={d}/empty.jsonl"], "The test split ({d}/empty.jsonl) is empty"),
    "non_utf8": (["--config.data.validation_files={d}/latin1.jsonl"], "latin1.jsonl is not valid UTF-8"),
    "batch": (
        ["--config.train.batch_size=6", "--config.mesh=(4,1,1)"],
        "batch size 6 does not divide over the 4 data-parallel devices",
    ),
    "mesh": (["--config.mesh=(4,4,1)"], "needs 16 devices but only"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_clear_error_before_training(xsum_setup, tmp_path, case):
    overrides, message = (
        x.replace("{d}", str(xsum_setup)) if isinstance(x, str) else [o.replace("{d}", str(xsum_setup)) for o in x]
        for x in BAD_INPUT[case]
    )
    env_devices = ["--config.mesh=(1,1,1)"] if case not in ("batch", "mesh") else []
    out = _xsum_cli(xsum_setup, tmp_path / "w", *env_devices, *overrides, devices=4 if case == "batch" else 1)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_teacher_and_tokenizer_problems_name_what_was_found(xsum_setup, tmp_path):
    not_bart = tmp_path / "t5"
    not_bart.mkdir()
    (not_bart / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 100, "d_model": 8}))
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (not_bart / name).write_bytes((xsum_setup / "teacher" / name).read_bytes())
    out = _xsum_cli(xsum_setup, tmp_path / "a", f"--config.teacher.path={not_bart}")
    assert out.returncode != 0 and "model_type='t5'" in out.stderr and "BART or mBART" in out.stderr
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((xsum_setup / "teacher" / name).read_bytes())
    out = _xsum_cli(xsum_setup, tmp_path / "b", f"--config.teacher.path={no_tok}")
    assert out.returncode != 0 and f"No tokenizer in {no_tok}" in out.stderr
    small = tmp_path / "small_vocab"
    small.mkdir()
    cfg = json.loads((xsum_setup / "teacher" / "config.json").read_text())
    import transformers

    transformers.BartForConditionalGeneration(
        transformers.BartConfig(
            **dict(
                {
                    k: cfg[k]
                    for k in (
                        "d_model",
                        "encoder_layers",
                        "decoder_layers",
                        "encoder_attention_heads",
                        "decoder_attention_heads",
                        "encoder_ffn_dim",
                        "decoder_ffn_dim",
                        "max_position_embeddings",
                    )
                },
                vocab_size=1000,
            )
        )
    ).save_pretrained(small)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (small / name).write_bytes((xsum_setup / "teacher" / name).read_bytes())
    out = _xsum_cli(xsum_setup, tmp_path / "c", f"--config.teacher.path={small}")
    assert out.returncode != 0 and re.search(r"The tokenizer \(.*\) has 50265 tokens but the teacher", out.stderr)
    assert "vocab_size 1000" in out.stderr
