"""Helper functions for the tests (importable as ``helpers``: tests/ is on pytest's pythonpath).

A test that needs an external program (RELION, PostgreSQL, chromium) may skip only outside CI:
with ``CI=true`` a missing program is a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TEST_DATA = Path(__file__).resolve().parent / "data"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_program(name: str) -> str:
    """Return the path of an external program, or skip (fail in CI) when it is absent."""
    path = shutil.which(name)
    if path is None:
        if in_ci():
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


PLUGIN_DIR = Path(__file__).resolve().parent / "data" / "plugin"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0, poll_s: float = 0.1) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise TimeoutError("condition not met in time")
