"""Server configuration: defaults, then a TOML file, then ``CRYOSTACK_*`` environment variables.

Nothing is read at import time: call :func:`load_settings`. A configuration file holds top-level
keys named like the :class:`Settings` fields (``data_root = "/srv/cryostack"``, ``port = 8600``);
the environment overrides it with upper-case names prefixed ``CRYOSTACK_`` (``CRYOSTACK_PORT``).
``CRYOSTACK_CONFIG`` names the file when none is given.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

ENV_PREFIX = "CRYOSTACK_"
CONFIG_ENV = "CRYOSTACK_CONFIG"
DEFAULT_DATA_ROOT = Path("~/.local/share/cryostack-server")


class ConfigError(Exception):
    """The configuration file or an environment variable is invalid (the message names it)."""


class Settings(BaseModel):
    """Everything the web server needs to know; see the module docstring for the sources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: Path = Field(
        DEFAULT_DATA_ROOT, description="folder of the server database and of the projects"
    )
    server_database_url: str | None = Field(
        None, description="SQLAlchemy URL of the server database (default SQLite in data_root)"
    )
    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, le=65535)
    tls_cert: Path | None = Field(None, description="PEM certificate: serve HTTPS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    secure_cookies: bool | None = Field(
        None, description="mark cookies Secure (default: when serving HTTPS)"
    )
    session_ttl_s: int = Field(14 * 24 * 3600, gt=0, description="lifetime of a login session")
    login_max_failures: int = Field(5, ge=1, description="failed logins per user+IP in window")
    login_window_s: int = Field(900, gt=0, description="rate-limit window of failed logins")
    static_dir: Path | None = Field(None, description="built front end (default: packaged)")
    sse_poll_s: float = Field(1.0, gt=0, description="how often live events poll a project")
    sse_max_s: float = Field(300.0, gt=0, description="a live event stream ends after this")
    log_chunk_bytes: int = Field(1 << 20, gt=0, description="most log bytes per request")
    run_workers: int | None = Field(None, ge=1, description="worker processes per run")
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_kib: int = Field(65536, ge=8)

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

    @property
    def https(self) -> bool:
        return self.tls_cert is not None

    @property
    def cookies_secure(self) -> bool:
        return self.https if self.secure_cookies is None else self.secure_cookies

    @property
    def root(self) -> Path:
        """The data root, absolute with ``~`` expanded."""
        return self.data_root.expanduser().absolute()

    @property
    def projects_root(self) -> Path:
        return self.root / "projects"

    @property
    def database_url(self) -> str:
        return self.server_database_url or f"sqlite:///{self.root / 'server.db'}"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: configuration file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return data


def _read_env(env: Mapping[str, str]) -> dict[str, str]:
    names = {f"{ENV_PREFIX}{field.upper()}": field for field in Settings.model_fields}
    return {names[k]: v for k, v in env.items() if k in names}


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults < file (``config_file`` or ``$CRYOSTACK_CONFIG``) < environment < ``overrides``.

    ``overrides`` whose value is None are ignored (handy for optional command-line options).
    """
    env = os.environ if env is None else env
    source = "defaults"
    values: dict[str, Any] = {}
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if path is not None:
        values.update(_read_file(path))
        source = str(path)
    from_env = _read_env(env)
    values.update(from_env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(values)
    except PydanticValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "settings"
            origin = f"${ENV_PREFIX}{key.upper()}" if key in from_env else source
            problems.append(f"{key} ({origin}): {err['msg']}")
        raise ConfigError("invalid server configuration: " + "; ".join(problems)) from exc
