"""Shared server state and the request dependencies that authenticate and authorize.

Authentication: ``Authorization: Bearer <API token>`` (CLI, scripts), else the session cookie
of a browser login. Requests that change state and authenticate by cookie must carry the
session's CSRF token in the ``X-CSRF-Token`` header (the login response gives it, and sets it
in the readable ``cryostack_csrf`` cookie); bearer requests carry no ambient credentials and
need none. Authorization: a project is visible to its owner, its members and admins; to anyone
else it does not exist (404), so no data and not even its existence leaks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from cryostack.core import db
from cryostack.core.project import Project, ProjectError
from cryostack.web.config import Settings
from cryostack.web.security import (
    RateLimit,
    new_token,
    password_hasher,
    same_secret,
    token_hash,
)
from cryostack.web.store import ADMIN, LoginSession, ProjectRecord, ServerStore, User

SESSION_COOKIE = "cryostack_session"
CSRF_COOKIE = "cryostack_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ServerState:
    """What every request shares: settings, the server database, open projects."""

    def __init__(self, settings: Settings):
        self.settings = settings
        settings.projects_root.mkdir(parents=True, exist_ok=True)
        self.store = ServerStore.open(settings.database_url)
        self.hasher = password_hasher(settings.argon2_time_cost, settings.argon2_memory_kib)
        self.rate_limit = RateLimit(settings.login_max_failures, settings.login_window_s)
        # checked for unknown users, so a sign-in takes as long whether or not the user exists
        self.dummy_hash = self.hasher.hash(new_token())
        self._projects: dict[int, Project] = {}
        self._lock = threading.Lock()

    def open_project(self, record: ProjectRecord) -> Project:
        """The project of a record, opened once and kept open."""
        with self._lock:
            project = self._projects.get(record.id)
            if project is None:
                try:
                    project = Project.open(self.settings.projects_root / record.folder)
                except ProjectError as exc:
                    raise HTTPException(
                        status.HTTP_409_CONFLICT,
                        f"project {record.id} ({record.name}) cannot be opened: {exc}",
                    ) from exc
                self._projects[record.id] = project
            return project

    def forget_project(self, project_id: int) -> None:
        with self._lock:
            project = self._projects.pop(project_id, None)
        if project is not None:
            project.close()

    def close(self) -> None:
        with self._lock:
            for project in self._projects.values():
                project.close()
            self._projects.clear()
        self.store.close()


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.cryostack
    return state


State = Annotated[ServerState, Depends(server_state)]


@dataclass(frozen=True)
class Principal:
    """The authenticated user and how they proved it (``"session"`` or ``"token"``)."""

    user: User
    via: str
    login: LoginSession | None = None

    @property
    def is_admin(self) -> bool:
        return self.user.role == ADMIN


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def current_principal(request: Request, state: State) -> Principal:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("the Authorization header must be 'Bearer <API token>'")
        user = state.store.user_by_token_hash(token_hash(token.strip()))
        if user is None:
            raise _unauthorized("the API token is not valid (revoked, expired or unknown)")
        return Principal(user, "token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise _unauthorized("not signed in")
    found = state.store.session_by_hash(token_hash(cookie))
    if found is None:
        raise _unauthorized("the session has expired; sign in again")
    login, user = found
    if request.method not in SAFE_METHODS and not same_secret(
        request.headers.get(CSRF_HEADER), login.csrf_hash
    ):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"missing or wrong CSRF token (header {CSRF_HEADER})"
        )
    return Principal(user, "session", login)


CurrentUser = Annotated[Principal, Depends(current_principal)]


def require_admin(principal: CurrentUser) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin may do this")
    return principal


AdminUser = Annotated[Principal, Depends(require_admin)]


@dataclass(frozen=True)
class ProjectAccess:
    """A project the current user may see; ``can_manage``: owner or admin."""

    record: ProjectRecord
    principal: Principal
    state: ServerState

    @property
    def can_manage(self) -> bool:
        return self.principal.is_admin or self.record.owner_id == self.principal.user.id

    def require_manager(self) -> None:
        if not self.can_manage:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "only the project's owner or an admin may do this"
            )

    @property
    def project(self) -> Project:
        return self.state.open_project(self.record)

    def run(self, run_id: int) -> db.Run:
        """A run of this project, or 404."""
        try:
            return self.project.run(run_id)
        except ProjectError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} not found") from exc


def project_access(project_id: int, principal: CurrentUser, state: State) -> ProjectAccess:
    record = state.store.project(project_id)
    visible = record is not None and (
        principal.is_admin
        or record.owner_id == principal.user.id
        or state.store.is_member(record.id, principal.user.id)
    )
    if record is None or not visible:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")
    return ProjectAccess(record, principal, state)


ProjectDep = Annotated[ProjectAccess, Depends(project_access)]
