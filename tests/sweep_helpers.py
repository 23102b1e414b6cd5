"""Shared by the tests of train.sweep (tests/test_sweep_*.py): the repository root, the
interpreter, an autouse fixture that runs each test from the root, and the writers of a point's
results.json."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # commands keep repo-relative paths only when run from the root


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _results(ratio, mib, packed, packed_ratio, test, teacher_test, dev=None, teacher_mib=532.0):
    r = {
        "size": {
            "convention": "paper",
            "teacher_mib": teacher_mib,
            "student_mib": mib,
            "compression_ratio": ratio,
            "packed_student_mib": packed,
            "packed_compression_ratio": packed_ratio,
        },
        "student_test": test,
        "teacher_test": teacher_test,
        "config": {},
    }
    if dev is not None:
        r["student_dev"] = {"rougeLsum": dev, "step": 10}
    return r
