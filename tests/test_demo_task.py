"""The offline demo task: deterministic data, sane statistics, a BART-like tokenizer, idempotence."""

import json
import re
from pathlib import Path

import pytest

from dq_jax.data import demo_task
from dq_jax.inference.metrics import split_sentences

SIZES = {"train": 400, "validation": 50, "test": 100}
VOCAB = 500  # small enough that 400 examples surely provide the merges


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Splits and tokenizer, built once for the module."""
    root = tmp_path_factory.mktemp("demo")
    paths = demo_task.write_splits(str(root / "data"), sizes=SIZES, seed=0)
    tok_dir = demo_task.train_tokenizer([paths["train"]], str(root / "tokenizer"), vocab_size=VOCAB)
    return root, paths, tok_dir


def test_same_seed_same_rows_and_different_seed_different_rows():
    assert demo_task.make_split(30, seed=7) == demo_task.make_split(30, seed=7)
    a, b = demo_task.make_split(30, seed=7), demo_task.make_split(30, seed=8)
    assert [r["document"] for r in a] != [r["document"] for r in b]


def test_splits_differ_and_share_no_document(built):
    _, paths, _ = built
    rows = {split: _read(path) for split, path in paths.items()}
    assert {split: len(r) for split, r in rows.items()} == SIZES
    docs = {split: {r["document"] for r in split_rows} for split, split_rows in rows.items()}
    assert len(docs["train"]) == SIZES["train"]  # no duplicates inside a split either
    assert not docs["train"] & docs["test"]
    assert not docs["train"] & docs["validation"]
    assert not docs["validation"] & docs["test"]
    ids = [r["id"] for split_rows in rows.values() for r in split_rows]
    assert len(set(ids)) == len(ids)


def test_statistics_in_range():
    rows = demo_task.make_split(600, seed=3)
    doc_words = [len(r["document"].split()) for r in rows]
    sum_words = [len(r["summary"].split()) for r in rows]
    assert min(doc_words) >= 40 and max(doc_words) <= 90
    assert 50 <= sum(doc_words) / len(rows) <= 65
    assert min(sum_words) >= 8 and max(sum_words) <= 16
    assert all(3 <= len(split_sentences(r["document"])) <= 6 for r in rows)
    assert all(len(split_sentences(r["summary"])) == 1 for r in rows)
    # Summaries are rewritten, not lifted: none is a sentence of its document.
    assert all(r["summary"] not in r["document"] for r in rows)
    words = {w for r in rows for w in re.findall(r"[A-Za-z0-9']+", r["document"] + " " + r["summary"])}
    assert 300 <= len(words) <= 700  # a modest closed vocabulary


def test_summary_rules_need_comparisons():
    # Results: the verb depends on which of the two profits is larger.
    rows = [r for r in demo_task.make_split(400, seed=5) if " profit " in r["summary"]]
    verbs = {r["summary"].split(" profit ")[1].split()[0] for r in rows}
    assert verbs == {"rises", "falls"}
    for r in rows:
        now = int(re.search(r"to (\d+) million", r["summary"]).group(1))
        before = int(re.search(r"(?:compares with|company made) (\d+) million", r["document"]).group(1))
        assert ("rises" in r["summary"]) == (now > before)


def test_tokenizer_is_bart_like(built):
    from transformers import AutoTokenizer

    _, paths, tok_dir = built
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tok) == VOCAB
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == VOCAB - 1
    for row in _read(paths["test"])[:20]:
        for text in (row["document"], row["summary"]):
            ids = tok(text).input_ids
            assert ids[0] == 0 and ids[-1] == 2
            assert 3 not in ids  # everything is covered by the byte-level alphabet
            assert tok.decode(ids, skip_special_tokens=True) == text


def test_outputs_are_reproducible_and_second_calls_rewrite_nothing(built, tmp_path):
    root, paths, tok_dir = built
    files = [*(root / "data").iterdir(), *(root / "tokenizer").iterdir()]
    before = {f: f.stat().st_mtime_ns for f in files}
    assert demo_task.write_splits(str(root / "data"), sizes=SIZES, seed=0) == paths
    assert demo_task.train_tokenizer([paths["train"]], tok_dir, vocab_size=VOCAB) == tok_dir
    assert {f: f.stat().st_mtime_ns for f in files} == before
    # A fresh build elsewhere gives byte-identical files.
    again = demo_task.write_splits(str(tmp_path / "data"), sizes=SIZES, seed=0)
    for split in SIZES:
        assert Path(again[split]).read_bytes() == Path(paths[split]).read_bytes()
    other = demo_task.train_tokenizer([again["train"]], str(tmp_path / "tok"), vocab_size=VOCAB)
    assert (Path(other) / "tokenizer.json").read_bytes() == (Path(tok_dir) / "tokenizer.json").read_bytes()


def test_changed_request_rewrites(built, tmp_path):
    _, paths, _ = built
    small = demo_task.write_splits(str(tmp_path), sizes={"train": 5}, seed=0)
    assert len(_read(small["train"])) == 5
    bigger = demo_task.write_splits(str(tmp_path), sizes={"train": 8}, seed=0)
    rows = _read(bigger["train"])
    assert len(rows) == 8 and rows == _read(paths["train"])[:8]  # same stream, longer prefix
