"""bench.data's corpora (a shared validation file cycled up to the paper's size) and the loader
it compares against (revision 5859ace's `dq_jax/data.py`, extracted with `git show`)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys

from bench.common import ROOT

OLD_REVISION = "5859ace"
OLD_MODULE = f"dq_jax_data_{OLD_REVISION}"
CORPORA = {  # name: (file under <shared>, pairs at full size)
    "xsum": ("xsum/validation.jsonl", 204_000),
    "cnn_dm": ("cnn_dailymail/validation_mini100.jsonl", 287_000),
}
TOKENIZER = "tokenizers/bart-base_roberta-base"
MAX_SOURCE, MAX_TARGET = 1024, 128


def shared_data() -> str:
    return os.environ.get("DQ_JAX_SHARED_DATA") or os.path.join(os.path.dirname(ROOT), "shared", "data")


def build_corpus(src: str, pairs: int, out: str) -> int:
    """`out`: the lines of `src` repeated (cycled) up to `pairs` lines; returns the line count."""
    with open(src, encoding="utf-8") as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(itertools.islice(itertools.cycle(lines), pairs))
    return pairs


def extract_old(dest_dir: str) -> tuple[str | None, str | None]:
    """(path of revision 5859ace's dq_jax/data.py written into `dest_dir`, None), or (None, why not)."""
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, "show", f"{OLD_REVISION}:dq_jax/data.py"], capture_output=True, text=True
        )
    except OSError as e:
        return None, f"git is unavailable ({e})"
    if out.returncode != 0:
        return None, f"git show {OLD_REVISION}:dq_jax/data.py failed: {out.stderr.strip()[:200]}"
    path = os.path.join(dest_dir, f"{OLD_MODULE}.py")
    with open(path, "w") as f:
        f.write(out.stdout)
    return path, None


def import_old(path: str):
    """The extracted old module (registered in sys.modules: its dataclasses look themselves up there)."""
    spec = importlib.util.spec_from_file_location(OLD_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[OLD_MODULE] = module
    spec.loader.exec_module(module)
    return module
