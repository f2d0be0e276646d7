"""Projects (list, create, summary, delete), their members, their files, and the protocol
catalogue."""

from __future__ import annotations

import re
import shutil
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from cryostack.core.project import ACTIVE, Project, ProjectError
from cryostack.core.registry import UnknownProtocolError, get_protocol, protocol_classes
from cryostack.core.summaries import project_summary, protocol_description
from cryostack.execution.launch import refresh_status
from cryostack.web.deps import CurrentUser, ProjectAccess, ProjectDep, State
from cryostack.web.security import PathEscapeError, resolve_inside
from cryostack.web.store import ProjectRecord

router = APIRouter(prefix="/api")
MAX_LISTING = 5000


class ProjectBody(BaseModel):
    name: str = Field(min_length=1, max_length=256)


def record_json(record: ProjectRecord, access_role: str, owner: str | None) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "owner": owner,
        "created_at": record.created_at,
        "access": access_role,
    }


def _access_role(state: State, record: ProjectRecord, principal: CurrentUser) -> str:
    if record.owner_id == principal.user.id:
        return "owner"
    if state.store.is_member(record.id, principal.user.id):
        return "member"
    return "admin"


def _owner_name(state: State, record: ProjectRecord) -> str | None:
    owner = state.store.user(record.owner_id)
    return owner.username if owner else None


# -- protocols -------------------------------------------------------------------------------
@router.get("/protocols", tags=["protocols"])
def list_protocols(
    _user: CurrentUser,
    q: str | None = Query(None, max_length=200, description="search id, name, category, help"),
    category: str | None = Query(None, max_length=200),
) -> list[dict[str, Any]]:
    """The protocol catalogue with parameter schemas, by category then id."""
    found = []
    for cls in sorted(protocol_classes().values(), key=lambda c: (c.category, c.id)):
        if category and cls.category.lower() != category.lower():
            continue
        text = f"{cls.id} {cls.name} {cls.category} {cls.help}".lower()
        if q and q.lower() not in text:
            continue
        found.append(protocol_description(cls))
    return found


@router.get("/protocols/{protocol_id}", tags=["protocols"])
def show_protocol(protocol_id: str, _user: CurrentUser) -> dict[str, Any]:
    try:
        return protocol_description(get_protocol(protocol_id))
    except UnknownProtocolError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


# -- projects --------------------------------------------------------------------------------
@router.get("/projects", tags=["projects"])
def list_projects(principal: CurrentUser, state: State) -> list[dict[str, Any]]:
    """Projects the caller owns or is a member of (an admin sees all)."""
    return [
        record_json(r, _access_role(state, r, principal), _owner_name(state, r))
        for r in state.store.visible_projects(principal.user)
    ]


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower()
    return slug[:40] or "project"


@router.post("/projects", tags=["projects"], status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectBody, principal: CurrentUser, state: State) -> dict[str, Any]:
    """Create a project owned by the caller, in a new folder under the server's data root."""
    folder = f"{uuid.uuid4().hex[:10]}-{_slug(body.name)}"
    record = state.store.add_project(body.name, principal.user.id, folder)
    try:
        Project.create(state.settings.projects_root / folder, name=body.name).close()
    except (ProjectError, OSError) as exc:
        state.store.delete_project(record.id)
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot create project: {exc}") from exc
    return record_json(record, "owner", principal.user.username)


@router.get("/projects/{project_id}", tags=["projects"])
def show_project(access: ProjectDep, state: State) -> dict[str, Any]:
    """The project with its runs counted by status and its outputs."""
    summary = project_summary(access.project)
    summary.pop("root", None)  # server paths are not the client's business
    record = access.record
    return {
        **record_json(record, _access_role(state, record, access.principal), None),
        **summary,
        "name": record.name,
        "owner": _owner_name(state, record),
    }


@router.delete("/projects/{project_id}", tags=["projects"])
def delete_project(access: ProjectDep, state: State) -> dict[str, Any]:
    """Delete a project and its folder (owner or admin; not while a run is active)."""
    access.require_manager()
    project = access.project
    active = [r.id for r in project.runs() if refresh_status(project, r.id) in ACTIVE]
    if active:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"runs {', '.join(map(str, active))} are active; stop them first",
        )
    record = access.record
    state.forget_project(record.id)
    state.store.delete_project(record.id)
    try:
        folder = resolve_inside(state.settings.projects_root, record.folder)
    except PathEscapeError:
        folder = None
    if folder is not None and folder != state.settings.projects_root.resolve():
        shutil.rmtree(folder, ignore_errors=True)
    return {"deleted": record.id}


# -- members ---------------------------------------------------------------------------------
@router.get("/projects/{project_id}/members", tags=["projects"])
def list_members(access: ProjectDep, state: State) -> dict[str, Any]:
    members = state.store.members(access.record.id)
    return {
        "owner": _owner_name(state, access.record),
        "members": [m.username for m in members],
    }


def _member_user_id(access: ProjectAccess, state: State, username: str) -> int:
    access.require_manager()
    user = state.store.user_by_name(username)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {username!r} not found")
    return user.id


@router.put("/projects/{project_id}/members/{username}", tags=["projects"])
def add_member(access: ProjectDep, state: State, username: str) -> dict[str, Any]:
    """Give a user access to the project (owner or admin)."""
    user_id = _member_user_id(access, state, username)
    if user_id == access.record.owner_id:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{username} owns the project")
    state.store.add_member(access.record.id, user_id)
    return list_members(access, state)


@router.delete("/projects/{project_id}/members/{username}", tags=["projects"])
def remove_member(access: ProjectDep, state: State, username: str) -> dict[str, Any]:
    user_id = _member_user_id(access, state, username)
    if not state.store.remove_member(access.record.id, user_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{username} is not a member")
    return list_members(access, state)


# -- files -----------------------------------------------------------------------------------
def _project_path(access: ProjectAccess, path: str) -> Any:
    root = access.project.root
    try:
        return root.resolve(), resolve_inside(root, path)
    except PathEscapeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


@router.get("/projects/{project_id}/files", tags=["files"])
def list_files(
    access: ProjectDep, path: str = Query("", max_length=4096, description="folder")
) -> dict[str, Any]:
    """The entries of a folder of the project (paths relative to the project folder)."""
    root, target = _project_path(access, path)
    if not target.is_dir():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no folder {path!r} in the project")
    entries = []
    for child in sorted(target.iterdir())[:MAX_LISTING]:
        kind = "link" if child.is_symlink() else "dir" if child.is_dir() else "file"
        size = child.stat().st_size if kind == "file" else None
        entries.append({"name": child.name, "type": kind, "size": size})
    return {"path": target.relative_to(root).as_posix(), "entries": entries}


@router.get(
    "/projects/{project_id}/files/content",
    tags=["files"],
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_file(
    access: ProjectDep, path: str = Query(..., max_length=4096, description="file")
) -> FileResponse:
    """A file of the project (symbolic links leading outside the project are refused)."""
    _root, target = _project_path(access, path)
    if not target.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {path!r} in the project")
    return FileResponse(target, filename=target.name)
