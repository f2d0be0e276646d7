"""Helpers of the web tests: a server on a temporary data root, signed-in clients, users."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cryostack.core.registry import reload_protocols
from cryostack.web.app import create_app
from cryostack.web.config import Settings
from cryostack.web.deps import CSRF_HEADER, ServerState

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "data" / "plugin"
PASSWORD = "correct horse battery"


def fast_settings(root: Path, **overrides: Any) -> Settings:
    """Settings for tests: cheap argon2 parameters (still argon2id), short live streams."""
    values: dict[str, Any] = {
        "data_root": root,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 64,
        "sse_poll_s": 0.1,
        "sse_max_s": 3.0,
        "run_workers": 1,
    }
    return Settings(**{**values, **overrides})


def state_of(app: FastAPI) -> ServerState:
    state: ServerState = app.state.cryostack
    return state


def add_user(app: FastAPI, username: str, role: str = "user") -> int:
    from cryostack.web.accounts import create_user

    state = state_of(app)
    user, _ = create_user(state.store, state.hasher, username, PASSWORD, role)
    return user.id


def client(app: FastAPI, username: str | None = None, password: str = PASSWORD) -> TestClient:
    """A client of its own (own cookie jar), signed in as ``username`` when given; it sends
    the CSRF header of its session with every request, as the front end does."""
    c = TestClient(app, raise_server_exceptions=True)
    if username is not None:
        r = c.post("/api/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        c.headers[CSRF_HEADER] = r.json()["csrf_token"]
    return c


def token_client(app: FastAPI, token: str) -> TestClient:
    """A client authenticating with an API token only (no cookies, no CSRF header)."""
    c = TestClient(app)
    c.headers["Authorization"] = f"Bearer {token}"
    return c


@contextmanager
def plugin_installed() -> Iterator[None]:
    """The test plugin's protocols (test-squares...) for this process and its children."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGIN_DIR))
        path = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGIN_DIR), path])))
        reload_protocols()
        try:
            yield
        finally:
            reload_protocols()


def new_app(root: Path, **overrides: Any) -> FastAPI:
    return create_app(fast_settings(root, **overrides))
