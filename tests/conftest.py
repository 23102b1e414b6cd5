"""Test setup: 8 simulated CPU devices (before JAX initializes) and shared helpers."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tokenized splits and `datasets`' Arrow files go to a cache of this session (subprocesses
# inherit it), never the user's.
_CACHE = tempfile.mkdtemp(prefix="dq_jax_tests_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["DQ_JAX_CACHE"] = _CACHE
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE, "hf_datasets")

SHARED_DATA = Path(os.environ.get("DQ_JAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"{SHARED_DATA} not found: tests read real data from ../shared/data beside the checkout "
            "(or set DQ_JAX_SHARED_DATA)."
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def mbart_tok(shared_data, tmp_path_factory):
    """A real MBartTokenizer (language codes and all) over the pieces of the shared sentencepiece
    model. That file loads through `hf.load_tokenizer(dir, "mbart")` only with the
    `sentencepiece` package, which is not installed: its pieces are read with protobuf instead."""
    import transformers
    from transformers.convert_slow_tokenizer import import_protobuf

    from dq_jax.model import hf

    model = import_protobuf().ModelProto()
    model.ParseFromString((shared_data / "tokenizers" / "sentencepiece" / "en.wiki.bpe.vs100000.model").read_bytes())
    assert [p.piece for p in model.pieces[:3]] == ["<unk>", "<s>", "</s>"]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [
        (p.piece, p.score) for p in model.pieces[3:]
    ]
    out = tmp_path_factory.mktemp("mbart_tok")
    transformers.MBartTokenizer(vocab=vocab, src_lang="en_XX", tgt_lang="ro_RO").save_pretrained(out)
    t = hf.load_tokenizer(str(out), "mbart")
    assert type(t).__name__ == "MBartTokenizer"
    return t
