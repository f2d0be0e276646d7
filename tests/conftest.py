"""Shared test helpers.

A test that needs an external program (RELION, PostgreSQL, chromium) may skip only outside CI:
with ``CI=true`` a missing program is a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture
def relion() -> str:
    """Directory-independent check that RELION 3.1 tools are present; returns relion_project's path."""
    return require_program("relion_project")
