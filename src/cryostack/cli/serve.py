"""``cryostack serve`` and ``cryostack admin ...``: the web server and its accounts.

Wire into the main CLI with::

    from cryostack.cli.serve import admin_app, serve
    app.command("serve")(serve)
    app.add_typer(admin_app, name="admin")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from cryostack.cli.common import fail

if TYPE_CHECKING:
    from cryostack.web.config import Settings

console = Console()
admin_app = typer.Typer(help="Manage the web server's accounts.", no_args_is_help=True)


@admin_app.callback()
def admin_group() -> None:
    """Manage the web server's accounts."""


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (default $CRYOSTACK_CONFIG)"),
]
DataRootOpt = Annotated[
    Path | None,
    typer.Option(help="folder of the server database and projects ($CRYOSTACK_DATA_ROOT)"),
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    from cryostack.web.config import ConfigError, load_settings

    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        fail(str(exc))


def serve(
    config: ConfigOpt = None,
    data_root: DataRootOpt = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS")] = None,
    key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    admin_password: Annotated[
        str | None,
        typer.Option(
            envvar="CRYOSTACK_ADMIN_PASSWORD",
            help="password of the admin created on first start (default: generated, printed)",
        ),
    ] = None,
) -> None:
    """Run the web server. The first start creates the user 'admin'."""
    from cryostack.web.config import ConfigError
    from cryostack.web.server import bootstrap, run_server

    settings = _settings(
        config, data_root=data_root, host=host, port=port, tls_cert=cert, tls_key=key
    )
    try:
        name, generated = bootstrap(settings, admin_password)
    except ValueError as exc:
        fail(f"cannot create the admin: {exc}")
    if name:
        console.print(f"created the admin account [bold]{name}[/]")
        if generated:
            console.print(f"its password (shown only now): [bold]{generated}[/]")
    try:
        run_server(settings, console.print)
    except ConfigError as exc:
        fail(str(exc))


@admin_app.command("create-user")
def create_user_command(
    username: str,
    role: Annotated[str, typer.Option(help="admin or user")] = "user",
    password: Annotated[
        str | None, typer.Option(help="password (default: generated and printed once)")
    ] = None,
    config: ConfigOpt = None,
    data_root: DataRootOpt = None,
) -> None:
    """Create a web account."""
    from cryostack.web.accounts import create_user
    from cryostack.web.security import password_hasher
    from cryostack.web.store import ServerStore

    settings = _settings(config, data_root=data_root)
    settings.projects_root.mkdir(parents=True, exist_ok=True)
    store = ServerStore.open(settings.database_url)
    try:
        hasher = password_hasher(settings.argon2_time_cost, settings.argon2_memory_kib)
        user, generated = create_user(store, hasher, username, password, role)
    except ValueError as exc:
        fail(str(exc))
    finally:
        store.close()
    console.print(f"created {user.role} [bold]{user.username}[/]")
    if generated:
        console.print(f"password (shown only now): [bold]{generated}[/]")
