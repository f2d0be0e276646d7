"""Shared fixtures (helper functions live in tests/helpers.py).

A test that needs an external program (RELION, PostgreSQL, chromium) may skip only outside CI:
with ``CI=true`` a missing program is a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryostack.core.registry import reload_protocols
from helpers import PLUGIN_DIR, in_ci, require_program


@pytest.fixture
def relion() -> str:
    """Check that RELION 3.1 tools are present; returns relion_project's path."""
    return require_program("relion_project")


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Install the test plugin (an entry point on the path) for this process and its children."""
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH")]))
    )
    reload_protocols()
    yield PLUGIN_DIR
    reload_protocols()


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the session: $CRYOSTACK_TEST_PG_URL, or one started here."""
    url = os.environ.get("CRYOSTACK_TEST_PG_URL")
    if url:
        yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        if in_ci():
            pytest.fail("PostgreSQL is required in CI (Debian package postgresql)")
        pytest.skip("PostgreSQL server binaries are not installed")
    # not under pytest's tmp_path: that is private to root, and the server runs as "postgres"
    base = Path(tempfile.mkdtemp(prefix="cryostack-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: use the package's system user
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = 20000 + os.getpid() % 20000
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "cryostack", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "log"),
            "-w",
            "start",
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=''",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://cryostack@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def _new_pg_database(server_url: str) -> str:
    from sqlalchemy import create_engine, text

    name = f"cryostack_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base, _, query = server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (the SQLite default) or the URL of a fresh database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return None
    return _new_pg_database(request.getfixturevalue("postgres_server"))


PYTHON = sys.executable
