"""The main job end to end through its command line, on real data from ../shared/data."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from dq_jax.data import batches as data

REPO = Path(__file__).resolve().parents[1]


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _run_main(config: str, workdir, *overrides, timeout=900):
    cmd = [sys.executable, "-m", "train.main", "--config", config, "--workdir", str(workdir), *overrides]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )


def _data_files(files: dict) -> list[str]:
    return [f"--config.data.{split}_files={files[split]}" for split in ("train", "validation", "test")]


# A few steps of each stage and short generation: enough to reach every code path.
FEW_STEPS = (
    "--config.teacher.steps=4",
    "--config.train.steps=4",
    "--config.train.batch_size=8",
    "--config.train.grad_accum=1",
    "--config.train.log_every=2",
    "--config.eval.num_beams=2",
    "--config.eval.batch_size=8",
)


@pytest.fixture(scope="module")
def xsum_files(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("xsum")
    rows = [json.loads(line) for line in (shared_data / "xsum" / "validation.jsonl").read_text().splitlines()[:96]]
    return {
        s: _write_jsonl(d / f"{s}.jsonl", r)
        for s, r in (("train", rows[:64]), ("validation", rows[64:80]), ("test", rows[80:96]))
    }


@pytest.fixture(scope="module")
def tiny_bart(shared_data, tmp_path_factory):
    """A small random BART with the real BART vocabulary and tokenizer files beside it."""
    d = tmp_path_factory.mktemp("teacher")
    cfg = transformers.BartConfig(
        vocab_size=50265,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        forced_bos_token_id=0,
    )
    transformers.BartForConditionalGeneration(cfg).save_pretrained(d)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (d / name).write_bytes((shared_data / "tokenizers" / "bart-base_roberta-base" / name).read_bytes())
    return str(d)


def test_xsum_teacher_distill_eval(tmp_path, xsum_files, tiny_bart):
    work = tmp_path / "run"
    out = _run_main(
        "configs/xsum.py:wbits=2,ebits=2,abits=8,layers=2-1",
        work,
        f"--config.teacher.path={tiny_bart}",
        "--config.data.name=",
        *_data_files(xsum_files),
        *FEW_STEPS,
        "--config.data.max_source_length=128",
        "--config.data.max_target_length=32",
        "--config.teacher.learning_rate=1e-3",
        "--config.eval.min_length=2",
        "--config.eval.max_length=12",
        "--config.student.train_fraction=0.5",
        "--config.student.seed=3",
    )
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads((work / "results.json").read_text())
    rows = data.fraction_rows(64, 0.5, 3)  # the student's half of the 64 training rows
    assert results["student_train_data"] == {
        "fraction": 0.5,
        "seed": 3,
        "examples": 32,
        "of": 64,
        "rows_sha256": hashlib.sha256(rows.astype("<i8").tobytes()).hexdigest(),
    }
    for who in ("teacher", "student"):
        assert set(results[f"{who}_test"]) >= {"rouge1", "rouge2", "rougeL", "rougeLsum"}
        assert (work / f"predictions_{who}_test.txt").read_text().count("\n") == 16
    assert results["size"]["compression_ratio"] > 1
    assert results["config"]["quant"]["weight_bits"] == 2
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train" and r["stage"] == "distill"]
    assert [r["step"] for r in train_records] == [2, 4]
    assert {"loss", "task", "logits", "enc_attn", "cross_attn", "enc_hidden", "enc_last"} <= set(train_records[0])
    assert any(r["split"] == "dev" and r["stage"] == "teacher" for r in records)
    assert "model   | rouge1" in out.stdout and "student" in out.stdout


DEMO_SMALL = (
    "--config.stages=teacher",
    "--config.teacher.steps=16",
    "--config.train.batch_size=8",
    "--config.train.checkpoint_every=4",
    "--config.train.eval_every=8",
    "--config.train.log_every=4",
    "--config.data.max_examples=256",
    "--config.eval.max_examples=16",
    "--config.eval.max_length=12",
)


def _weights(workdir):
    from safetensors.numpy import load_file

    return load_file(str(workdir / "teacher_hf" / "model.safetensors"))


def test_sigkill_then_rerun_gives_the_uninterrupted_result(tmp_path):
    import signal
    import time

    straight = tmp_path / "straight"
    out = _run_main("configs/demo.py", straight, *DEMO_SMALL)
    assert out.returncode == 0, out.stderr[-4000:]

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "train.main", "--config", "configs/demo.py", "--workdir", str(killed), *DEMO_SMALL]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    latest, best = killed / "checkpoints" / "teacher" / "latest", killed / "checkpoints" / "teacher" / "best"
    deadline = time.time() + 600
    # kill after the step-8 evaluation saved a best checkpoint, before training finished
    while time.time() < deadline and proc.poll() is None:
        if (latest / "12").is_dir() or ((best / "8").is_dir() and (latest / "8").is_dir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (best / "8").is_dir()
    assert not (killed / "teacher_hf").exists()
    out = _run_main("configs/demo.py", killed, *DEMO_SMALL)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumed from step" in out.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


def test_a_rerun_over_finished_stages_writes_the_same_results(tmp_path):
    """The second run trains nothing (both stages are finished) yet reports the dev scores the
    first one reached, read back from the stages' best checkpoints."""
    work = tmp_path / "run"
    flags = (
        *(f for f in DEMO_SMALL if not f.startswith("--config.stages=")),
        "--config.stages=teacher,distill",
        "--config.train.steps=8",
    )
    out = _run_main("configs/demo.py", work, *flags)
    assert out.returncode == 0, out.stderr[-4000:]
    first = json.loads((work / "results.json").read_text())
    assert {"teacher_dev", "student_dev"} <= set(first)
    (work / "results.json").unlink()
    out = _run_main("configs/demo.py", work, *flags)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumed from step" not in out.stderr
    assert json.loads((work / "results.json").read_text()) == first


def _mbart_tokenizer(texts, out_dir):
    """A real MBartTokenizer (language codes en_XX/ro_RO and all) over a small unigram vocabulary
    trained here: mBART's own 250k-piece model is not available offline."""
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        texts,
        trainers.UnigramTrainer(vocab_size=800, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"),
    )
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    mb = transformers.MBartTokenizer(vocab=vocab, src_lang="en_XX", tgt_lang="ro_RO")
    mb.save_pretrained(out_dir)
    return mb


def test_wmt_en_ro_with_a_small_mbart_teacher_reports_bleu(tmp_path, shared_data):
    rows = [json.loads(line) for line in (shared_data / "wmt16_en_ro" / "validation.jsonl").read_text().splitlines()]
    files = {
        s: _write_jsonl(tmp_path / f"{s}.jsonl", r)
        for s, r in (("train", rows[:64]), ("validation", rows[64:80]), ("test", rows[80:96]))
    }
    teacher = tmp_path / "mbart"
    tok = _mbart_tokenizer([r["en"] for r in rows[:400]] + [r["ro"] for r in rows[:400]], teacher)
    ro = tok.convert_tokens_to_ids("ro_RO")
    cfg = transformers.MBartConfig(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        scale_embedding=True,
        decoder_start_token_id=ro,
    )
    transformers.MBartForConditionalGeneration(cfg).save_pretrained(teacher)
    work = tmp_path / "run"
    out = _run_main(
        "configs/wmt_en_ro.py:wbits=8,ebits=8,abits=8,layers=2-1",
        work,
        f"--config.teacher.path={teacher}",
        *_data_files(files),
        *FEW_STEPS,
        "--config.data.max_source_length=64",
        "--config.data.max_target_length=64",
        "--config.eval.max_length=16",
        "--config.stages=teacher,distill,eval",
    )
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads((work / "results.json").read_text())
    for who in ("teacher", "student"):
        assert "bleu" in results[f"{who}_test"] and results[f"{who}_test"]["bleu_signature"].startswith("nrefs:1")
    assert results["config"]["data"]["tgt_lang"] == "ro_RO"


def test_non_finite_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    work = tmp_path / "nan"
    out = _run_main(
        "configs/demo.py",
        work,
        "--config.stages=teacher",
        "--config.teacher.steps=12",
        "--config.teacher.learning_rate=1e30",
        "--config.train.warmup_ratio=0",
        "--config.train.batch_size=8",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=1",
        "--config.train.eval_every=100",
        "--config.data.max_examples=128",
    )
    assert out.returncode != 0
    msg = out.stderr
    assert "the loss or gradients became non-finite at step 2" in msg, msg[-3000:]
    assert "The last good checkpoint is step 1" in msg and "checkpoints/teacher/latest" in msg
    assert (work / "checkpoints" / "teacher" / "latest" / "1").is_dir()
    assert not (work / "teacher_hf").exists()


def test_config_mistakes_fail_before_any_work(tmp_path):
    out = _run_main("configs/demo.py", tmp_path / "a", "--config.train.bacth_size=4")
    assert out.returncode != 0 and "bacth_size" in out.stderr
    out = _run_main("configs/demo.py", tmp_path / "b", "--config.train.batch_size=four")
    assert out.returncode != 0 and "batch_size" in out.stderr
    out = _run_main("configs/demo.py:wbits=2,bogus=1", tmp_path / "c")
    assert out.returncode != 0 and "Unknown variant name 'bogus'" in out.stderr and "'wbits'" in out.stderr
    out = _run_main("configs/demo.py:layers=3-9", tmp_path / "d", "--config.data.max_examples=64")
    assert out.returncode != 0 and "student has 9 decoder layers but the teacher only 3" in out.stderr
    assert not (tmp_path / "d" / "checkpoints").exists()
    for d in "abc":
        assert not (tmp_path / d / "metrics.jsonl").exists()
