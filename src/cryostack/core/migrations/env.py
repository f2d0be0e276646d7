"""Alembic environment: migrations run on the connection the project store hands over."""

from __future__ import annotations

from alembic import context

from cryostack.core.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("cryostack migrations run through cryostack.core.project.upgrade_schema")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
