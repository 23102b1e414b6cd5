"""The persistent compilation cache: a second run of the same job in a new workdir compiles
nothing the first one compiled, and says so in run.log."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dq_jax.utils import compilation_cache, user_cache

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "--config.teacher.steps=2",
    "--config.train.steps=2",
    "--config.train.batch_size=8",
    "--config.train.log_every=1",
    "--config.data.max_examples=64",
    "--config.eval.max_examples=4",
    "--config.eval.max_length=8",
    "--config.eval.num_beams=2",
)


def _counts(log: str) -> tuple[int, int]:
    m = re.search(r"compilation cache: (\d+) hits \(saved [\d.]+ s of compiling\), (\d+) misses", log)
    assert m, log[-2000:]
    return int(m.group(1)), int(m.group(2))


def test_directory_setting():
    assert compilation_cache.directory("off") is None
    assert compilation_cache.directory("/x/cc") == "/x/cc"
    assert compilation_cache.directory("") == os.path.join(user_cache.root(), "compilation")


@pytest.mark.slow  # two demo jobs, about a minute
def test_second_run_in_a_new_workdir_compiles_nothing_new(tmp_path):
    cache = tmp_path / "compiled"
    runs = []
    for name in ("first", "second"):
        work = tmp_path / name
        subprocess.run(
            [
                sys.executable,
                "-m",
                "train.main",
                "--config",
                "configs/demo.py",
                "--workdir",
                str(work),
                f"--config.compilation_cache={cache}",
                *TINY,
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
            timeout=900,
        )
        runs.append(_counts((work / "run.log").read_text()))
    (_hits1, misses1), (hits2, misses2) = runs
    assert misses1 > 0 and any(cache.iterdir())
    # every program of the second run comes from the cache (the first also measured the CPU's
    # peak, which the second reads from its own cache file, so it compiles a few programs less)
    assert misses2 == 0 and hits2 > 0, runs
