"""Server configuration from a TOML file, CRYOSTACK_* environment variables and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryostack.web.config import ConfigError, load_settings
from cryostack.web.server import check_tls


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(f'data_root = "{tmp_path}/data"\nport = 9000\nhost = "0.0.0.0"\n')
    env = {"CRYOSTACK_PORT": "9100", "CRYOSTACK_SSE_POLL_S": "0.5", "OTHER": "x"}
    settings = load_settings(config, env=env, host=None)
    assert (settings.port, settings.host, settings.sse_poll_s) == (9100, "0.0.0.0", 0.5)
    assert settings.root == tmp_path / "data"
    assert settings.database_url == f"sqlite:///{tmp_path}/data/server.db"
    assert settings.projects_root == tmp_path / "data" / "projects"
    assert load_settings(config, env=env, port=80).port == 80
    env_file = {"CRYOSTACK_CONFIG": str(config)}
    assert load_settings(env=env_file).port == 9000
    assert not load_settings(env={}).https


def test_bad_configuration_names_the_source(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("prot = 9000\n")
    with pytest.raises(ConfigError, match=r"prot .*server.toml.*Extra inputs"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match=r"port \(\$CRYOSTACK_PORT\)"):
        load_settings(env={"CRYOSTACK_PORT": "eighty"})
    config.write_text("port = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", env={})


def test_tls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key must be given together"):
        load_settings(env={}, tls_cert=tmp_path / "cert.pem")
    settings = load_settings(env={}, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    assert settings.https and settings.cookies_secure
    with pytest.raises(ConfigError, match=r"certificate .*c.pem: no such file"):
        check_tls(settings)
