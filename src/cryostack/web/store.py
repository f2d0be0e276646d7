"""The server database: users, login sessions, API tokens, projects with owner and members.

It is separate from the project stores (each project keeps its own database in its folder):
this one only knows who may reach which project folder. SQLite under the data root by default;
the schema is created and upgraded by Alembic (:mod:`cryostack.web.migrations`, version table
``cryostack_server_version``), never by ``create_all``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    delete,
    func,
    make_url,
    or_,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cryostack.core import db
from cryostack.core.db import make_engine

ADMIN, USER = "admin", "user"
ROLES = (ADMIN, USER)
VERSION_TABLE = "cryostack_server_version"


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default=USER)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LoginSession(Base):
    """A browser login: the cookie carries the token; only hashes are stored."""

    __tablename__ = "login_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """A bearer token for the CLI and scripts (shown once; only its hash is stored)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProjectRecord(Base):
    """A project the server manages: its folder (relative to the projects root) and owner."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    folder: Mapped[str] = mapped_column(String(512), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Membership(Base):
    __tablename__ = "project_members"
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LoginAttempt(Base):
    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    ip: Mapped[str] = mapped_column(String(64))
    success: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


def upgrade_schema(engine: Engine) -> None:
    """Create or upgrade the server database to the newest schema (Alembic)."""
    from cryostack.web import migrations

    db.upgrade_to_head(engine, os.path.dirname(migrations.__file__))


class ServerStore:
    """The open server database. Every method is one short transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._writer = engine.execution_options(immediate=True)

    @classmethod
    def open(cls, url: str) -> ServerStore:
        """Open (creating or upgrading) the database at ``url``; a SQLite file's folder is made."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        upgrade_schema(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        with (
            Session(self._writer if write else self.engine, expire_on_commit=False) as s,
            s.begin(),
        ):
            yield s

    # -- users -------------------------------------------------------------------------------
    def count_users(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count(User.id))) or 0)

    def add_user(self, username: str, password_hash: str, role: str = USER) -> User:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        with self.session(write=True) as s:
            if s.scalars(select(User).where(User.username == username)).first():
                raise ValueError(f"user {username!r} already exists")
            user = User(username=username, password_hash=password_hash, role=role, active=True)
            s.add(user)
            s.flush()
            return user

    def user(self, user_id: int) -> User | None:
        with self.session() as s:
            return s.get(User, user_id)

    def user_by_name(self, username: str) -> User | None:
        with self.session() as s:
            return s.scalars(select(User).where(User.username == username)).first()

    def users(self) -> list[User]:
        with self.session() as s:
            return list(s.scalars(select(User).order_by(User.id)))

    def update_user(self, user_id: int, **fields: Any) -> User:
        with self.session(write=True) as s:
            user = s.get(User, user_id)
            if user is None:
                raise KeyError(user_id)
            for key, value in fields.items():
                setattr(user, key, value)
            if fields.get("active") is False or "password_hash" in fields:
                s.execute(delete(LoginSession).where(LoginSession.user_id == user_id))
            return user

    # -- sessions and tokens -----------------------------------------------------------------
    def add_session(self, user_id: int, token_hash: str, csrf_hash: str, ttl_s: int) -> None:
        with self.session(write=True) as s:
            s.add(
                LoginSession(
                    user_id=user_id,
                    token_hash=token_hash,
                    csrf_hash=csrf_hash,
                    expires_at=utcnow() + timedelta(seconds=ttl_s),
                )
            )

    def session_by_hash(self, token_hash: str) -> tuple[LoginSession, User] | None:
        """A live session and its (active) user; expired sessions are removed."""
        with self.session() as s:
            row = s.execute(
                select(LoginSession, User)
                .join(User, User.id == LoginSession.user_id)
                .where(LoginSession.token_hash == token_hash)
            ).first()
        if row is None:
            return None
        login, user = row
        if aware(login.expires_at) <= utcnow():
            self.delete_session(token_hash)
            return None
        return (login, user) if user.active else None

    def delete_session(self, token_hash: str) -> None:
        with self.session(write=True) as s:
            s.execute(delete(LoginSession).where(LoginSession.token_hash == token_hash))

    def add_token(
        self, user_id: int, name: str, prefix: str, token_hash: str, expires_at: datetime | None
    ) -> ApiToken:
        with self.session(write=True) as s:
            token = ApiToken(
                user_id=user_id,
                name=name,
                prefix=prefix,
                token_hash=token_hash,
                expires_at=expires_at,
            )
            s.add(token)
            s.flush()
            return token

    def tokens(self, user_id: int) -> list[ApiToken]:
        with self.session() as s:
            q = select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)
            return list(s.scalars(q))

    def delete_token(self, user_id: int, token_id: int) -> bool:
        with self.session(write=True) as s:
            result = s.execute(
                delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id)
            )
            return bool(getattr(result, "rowcount", 0))

    def user_by_token_hash(self, token_hash: str) -> User | None:
        """The active user of an unexpired token (its last use is recorded)."""
        with self.session(write=True) as s:
            row = s.execute(
                select(ApiToken, User)
                .join(User, User.id == ApiToken.user_id)
                .where(ApiToken.token_hash == token_hash)
            ).first()
            if row is None:
                return None
            token, user = row
            now = utcnow()
            if token.expires_at is not None and aware(token.expires_at) <= now:
                return None
            token.last_used_at = now
            return user if user.active else None

    # -- login attempts ----------------------------------------------------------------------
    def record_login(self, username: str, ip: str, success: bool) -> None:
        with self.session(write=True) as s:
            s.add(LoginAttempt(username=username[:64], ip=ip[:64], success=success))

    def recent_failures(self, username: str, ip: str, window_s: int) -> tuple[int, datetime | None]:
        """Failed logins of ``username`` from ``ip`` in the window since the last success,
        and the time of the oldest of them."""
        cutoff = utcnow() - timedelta(seconds=window_s)
        with self.session() as s:
            last_ok = s.scalar(
                select(func.max(LoginAttempt.at)).where(
                    LoginAttempt.username == username,
                    LoginAttempt.ip == ip,
                    LoginAttempt.success.is_(True),
                )
            )
            since = max(cutoff, aware(last_ok)) if last_ok else cutoff
            q = select(func.count(LoginAttempt.id), func.min(LoginAttempt.at)).where(
                LoginAttempt.username == username,
                LoginAttempt.ip == ip,
                LoginAttempt.success.is_(False),
                LoginAttempt.at > since,
            )
            count, oldest = s.execute(q).one()
        return int(count or 0), aware(oldest) if oldest else None

    # -- projects ----------------------------------------------------------------------------
    def add_project(self, name: str, owner_id: int, folder: str) -> ProjectRecord:
        with self.session(write=True) as s:
            record = ProjectRecord(name=name, owner_id=owner_id, folder=folder)
            s.add(record)
            s.flush()
            return record

    def delete_project(self, project_id: int) -> None:
        with self.session(write=True) as s:
            s.execute(delete(Membership).where(Membership.project_id == project_id))
            s.execute(delete(ProjectRecord).where(ProjectRecord.id == project_id))

    def project(self, project_id: int) -> ProjectRecord | None:
        with self.session() as s:
            return s.get(ProjectRecord, project_id)

    def visible_projects(self, user: User) -> list[ProjectRecord]:
        """Projects ``user`` owns or is a member of (an admin sees all)."""
        q = select(ProjectRecord).order_by(ProjectRecord.id)
        if user.role != ADMIN:
            member_of = select(Membership.project_id).where(Membership.user_id == user.id)
            q = q.where(or_(ProjectRecord.owner_id == user.id, ProjectRecord.id.in_(member_of)))
        with self.session() as s:
            return list(s.scalars(q))

    def is_member(self, project_id: int, user_id: int) -> bool:
        with self.session() as s:
            return s.get(Membership, (project_id, user_id)) is not None

    def members(self, project_id: int) -> list[User]:
        with self.session() as s:
            q = (
                select(User)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.project_id == project_id)
                .order_by(User.username)
            )
            return list(s.scalars(q))

    def add_member(self, project_id: int, user_id: int) -> None:
        with self.session(write=True) as s:
            if s.get(Membership, (project_id, user_id)) is None:
                s.add(Membership(project_id=project_id, user_id=user_id))

    def remove_member(self, project_id: int, user_id: int) -> bool:
        with self.session(write=True) as s:
            result = s.execute(
                delete(Membership).where(
                    Membership.project_id == project_id, Membership.user_id == user_id
                )
            )
            return bool(getattr(result, "rowcount", 0))
