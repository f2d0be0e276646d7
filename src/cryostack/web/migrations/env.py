"""Alembic environment: migrations run on the connection the server store hands over."""

from __future__ import annotations

from alembic import context

from cryostack.web.store import VERSION_TABLE, Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("server migrations run through cryostack.web.store.upgrade_schema")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
