"""Running the web server (uvicorn), with HTTPS when a certificate and key are configured."""

from __future__ import annotations

from collections.abc import Callable

from cryostack.web.accounts import ensure_admin
from cryostack.web.config import ConfigError, Settings
from cryostack.web.security import password_hasher
from cryostack.web.store import ServerStore


def check_tls(settings: Settings) -> None:
    """Both TLS files must exist and be readable files."""
    for label, path in (("certificate", settings.tls_cert), ("key", settings.tls_key)):
        if path is not None and not path.expanduser().is_file():
            raise ConfigError(f"TLS {label} {path}: no such file")


def bootstrap(settings: Settings, admin_password: str | None = None) -> tuple[str, str | None]:
    """First start: create the data root, the server database and an admin when there are no
    users. Returns ``(admin name, generated password or None)``; ``("", None)`` when users
    existed already."""
    settings.projects_root.mkdir(parents=True, exist_ok=True)
    store = ServerStore.open(settings.database_url)
    try:
        hasher = password_hasher(settings.argon2_time_cost, settings.argon2_memory_kib)
        created = ensure_admin(store, hasher, admin_password)
    finally:
        store.close()
    if created is None:
        return "", None
    user, generated = created
    return user.username, generated


def run_server(settings: Settings, log: Callable[[str], None] = print) -> None:
    """Serve until interrupted (uvicorn; one process, so live events and projects are shared)."""
    import uvicorn

    from cryostack.web.app import create_app

    check_tls(settings)
    scheme = "https" if settings.https else "http"
    log(f"cryostack serving {scheme}://{settings.host}:{settings.port} (data {settings.root})")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert.expanduser()) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key.expanduser()) if settings.tls_key else None,
        proxy_headers=False,
        log_level="info",
    )
