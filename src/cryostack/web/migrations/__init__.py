"""Alembic migrations of the server database (see :func:`cryostack.web.store.upgrade_schema`)."""
