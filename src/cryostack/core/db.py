"""Database schema of a project store (SQLAlchemy 2 ORM) and engine set-up.

SQLite (WAL journal, busy timeout, ``BEGIN IMMEDIATE`` for writing transactions) is the embedded
default; the same models run on PostgreSQL. The schema is created and upgraded by Alembic
(:mod:`cryostack.core.migrations`); never by ``create_all``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SQLITE_BUSY_TIMEOUT_MS = 30_000


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class ProjectMeta(Base):
    """Key/value facts about the project (name, creation time, cryostack version)."""

    __tablename__ = "project_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    """One run of a protocol: its parameters, state, provenance and environment."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    protocol: Mapped[str] = mapped_column(String(128), index=True)
    protocol_version: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    run_dir: Mapped[str] = mapped_column(String(512))
    log_path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(256), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    software: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    device: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    executor: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    n_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)

    inputs: Mapped[list[RunInput]] = relationship(
        back_populates="run", cascade="all, delete-orphan", foreign_keys="RunInput.run_id"
    )
    outputs: Mapped[list[RunOutput]] = relationship(
        back_populates="run", cascade="all, delete-orphan"
    )
    steps: Mapped[list[Step]] = relationship(back_populates="run", cascade="all, delete-orphan")
    history: Mapped[list[StatusChange]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="StatusChange.id"
    )


class StatusChange(Base):
    """Status history of a run."""

    __tablename__ = "run_status_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    message: Mapped[str] = mapped_column(Text, default="")
    run: Mapped[Run] = relationship(back_populates="history")


class RunInput(Base):
    """A provenance edge: output ``source_output`` of run ``source_run_id`` fed input ``name``."""

    __tablename__ = "run_inputs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(Integer, default=0)
    source_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    source_output: Mapped[str] = mapped_column(String(128))
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run: Mapped[Run] = relationship(back_populates="inputs", foreign_keys=[run_id])


class RunOutput(Base):
    """A registered (complete) output of a run."""

    __tablename__ = "run_outputs"
    __table_args__ = (UniqueConstraint("run_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    content_hash: Mapped[str] = mapped_column(String(64))
    n_items: Mapped[int | None] = mapped_column(Integer, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    run: Mapped[Run] = relationship(back_populates="outputs")


class Step(Base):
    """A checkpointed unit of work of a run (possibly one item, e.g. one micrograph)."""

    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("run_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(64))
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    run: Mapped[Run] = relationship(back_populates="steps")


def upgrade_to_head(engine: Engine, migrations_dir: str) -> None:
    """Run the Alembic migrations in ``migrations_dir`` up to the newest revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_dir)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite, enable WAL, a busy timeout and IMMEDIATE write transactions.

    Use ``engine.execution_options(immediate=True)`` for a read-then-write transaction: on SQLite
    it begins with ``BEGIN IMMEDIATE`` (taking the write lock up front, so two writers never
    deadlock on a lock upgrade); elsewhere the option is ignored.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's begin event emit BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("immediate"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine
