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
        pytest.fail(f"{SHARED_DATA} not found: tests read real data from ../shared/data beside the checkout "
                    "(or set DQ_JAX_SHARED_DATA).")
    return SHARED_DATA
