"""``cryostack serve`` (a real uvicorn process over HTTPS) and ``cryostack admin create-user``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
from typer.testing import CliRunner

from cryostack.cli.serve import admin_app
from helpers import require_program


def test_create_user_command(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["create-user", "dana", "--data-root", str(tmp_path), "--role", "admin"]
    result = runner.invoke(admin_app, args)
    assert result.exit_code == 0, result.output
    assert "created admin dana" in result.output
    password = result.output.split("shown only now):")[1].split()[0]
    assert len(password) >= 20
    again = runner.invoke(admin_app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(
        admin_app, ["create-user", "eve", "--data-root", str(tmp_path), "--role", "boss"]
    )
    assert bad.exit_code == 2 and "role 'boss'" in bad.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_over_https_creates_the_admin_and_sets_secure_cookies(tmp_path: Path) -> None:
    openssl = require_program("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    code = "import typer; from cryostack.cli.serve import serve; typer.run(serve)"
    args = ["--data-root", str(tmp_path / "data"), "--port", str(port)]
    args += ["--cert", str(cert), "--key", str(key)]
    env_password = {"CRYOSTACK_ADMIN_PASSWORD": "first-admin-pw"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**__import__("os").environ, **env_password, "CRYOSTACK_ARGON2_TIME_COST": "1"},
    )
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                health = httpx.get(f"{url}/api/health", verify=False, timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        assert health.json()["status"] == "ok"
        with httpx.Client(base_url=url, verify=False) as c:
            r = c.post("/api/auth/login", json={"username": "admin", "password": "first-admin-pw"})
            assert r.status_code == 200
            cookies = r.headers.get_list("set-cookie")
            assert len(cookies) == 2 and all("Secure" in h for h in cookies)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert "created the admin account admin" in output
    assert "first-admin-pw" not in output  # a given password is not echoed
    assert f"https://127.0.0.1:{port}" in output


def test_typer_wiring_of_serve_has_the_documented_options() -> None:
    from typer.main import get_command

    from cryostack.cli.serve import serve

    app = typer.Typer()
    app.command("serve")(serve)
    app.add_typer(admin_app, name="admin")
    command = get_command(app)
    help_text = CliRunner().invoke(app, ["serve", "--help"]).output
    for option in ("--config", "--data-root", "--cert", "--key", "--admin-password", "--port"):
        assert option in help_text
    assert "admin" in command.commands  # type: ignore[attr-defined]
