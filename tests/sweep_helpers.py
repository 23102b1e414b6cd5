"""Shared by the tests of train.sweep (tests/test_sweep_*.py): the repository root, the
interpreter, and an autouse fixture that runs each test from the root."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # commands keep repo-relative paths only when run from the root
