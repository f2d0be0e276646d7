"""Runs of a project: create (validated), launch, stop, continue, restart, copy, delete; run
page data; logs; workflow export and import."""

from __future__ import annotations

import shutil
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from cryostack.core import db
from cryostack.core.project import ACTIVE, InputLink, Project, ProjectError, ValidationError
from cryostack.core.registry import get_protocol
from cryostack.core.summaries import run_details, run_summary
from cryostack.core.workflow import export_workflow, import_workflow
from cryostack.execution.launch import continue_run, launch, refresh_status, restart_run, stop
from cryostack.web.deps import ProjectAccess, ProjectDep
from cryostack.web.security import PathEscapeError, resolve_inside

router = APIRouter(prefix="/api/projects/{project_id}", tags=["runs"])


class RunBody(BaseModel):
    protocol: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, list[str]] = Field(
        default_factory=dict, description='input name -> ["RUN" or "RUN.OUTPUT", ...]'
    )
    label: str = Field("", max_length=256)
    seed: int | None = Field(None, ge=0, lt=2**31)
    draft: bool = Field(
        False, description="record a draft whose inputs may come from runs not finished yet"
    )
    launch: bool = Field(False, description="launch right away")


class CopyBody(BaseModel):
    params: dict[str, Any] = Field(default_factory=dict, description="parameters to change")
    label: str | None = Field(None, max_length=256)
    seed: int | None = Field(None, ge=0, lt=2**31, description="default: a new seed")


def _links(inputs: dict[str, list[str]]) -> dict[str, list[InputLink]]:
    return {name: [InputLink.parse(ref) for ref in refs] for name, refs in inputs.items()}


def _summary(project: Project, run_id: int) -> dict[str, Any]:
    refresh_status(project, run_id)
    return run_summary(project.run(run_id))


def _details(project: Project, run_id: int) -> dict[str, Any]:
    refresh_status(project, run_id)
    details = run_details(project, run_id)
    details["steps_by_status"] = project.count_steps(run_id)
    return details


def _workers(access: ProjectAccess) -> int | None:
    return access.state.settings.run_workers


@router.get("/runs")
def list_runs(access: ProjectDep) -> list[dict[str, Any]]:
    """The runs with their status, inputs and outputs (the workflow graph)."""
    project = access.project
    return [_summary(project, r.id) for r in project.runs()]


@router.post("/runs/validate")
def validate_run(body: RunBody, access: ProjectDep) -> dict[str, Any]:
    """Check a run's parameters and inputs without creating it: ``problems`` lists messages."""
    try:
        access.project.validate(
            get_protocol(body.protocol), body.params, _links(body.inputs), body.seed or 0
        )
    except ValidationError as exc:
        return {"valid": False, "problems": exc.problems}
    return {"valid": True, "problems": []}


@router.post("/runs", status_code=status.HTTP_201_CREATED)
def create_run(body: RunBody, access: ProjectDep) -> dict[str, Any]:
    """Create a run (validated; nothing is recorded when invalid) and optionally launch it."""
    project = access.project
    links = _links(body.inputs)
    if body.draft:
        run_id = project.create_draft(body.protocol, body.params, links, body.label, body.seed)
    else:
        run_id = project.create_run(body.protocol, body.params, links, body.label, body.seed)
    if body.launch:
        launch(project, run_id, _workers(access))
    return _details(project, run_id)


@router.get("/runs/{run_id}")
def show_run(run_id: int, access: ProjectDep) -> dict[str, Any]:
    """Run page data: params, inputs, outputs, steps, timings, software versions, citations."""
    access.run(run_id)
    return _details(access.project, run_id)


@router.post("/runs/{run_id}/launch")
def launch_run(run_id: int, access: ProjectDep) -> dict[str, Any]:
    """Launch a draft."""
    run = access.run(run_id)
    if run.status != "draft":
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"run {run_id} is {run.status}; only drafts launch"
        )
    launch(access.project, run_id, _workers(access))
    return _summary(access.project, run_id)


@router.post("/runs/{run_id}/stop")
def stop_run(run_id: int, access: ProjectDep) -> dict[str, Any]:
    access.run(run_id)
    stop(access.project, run_id)
    return _summary(access.project, run_id)


@router.post("/runs/{run_id}/continue")
def continue_(run_id: int, access: ProjectDep) -> dict[str, Any]:
    """Resume a failed or stopped run; steps already done are skipped."""
    access.run(run_id)
    continue_run(access.project, run_id, _workers(access))
    return _summary(access.project, run_id)


@router.post("/runs/{run_id}/restart")
def restart(run_id: int, access: ProjectDep) -> dict[str, Any]:
    """Run again from scratch with the same parameters and inputs."""
    access.run(run_id)
    restart_run(access.project, run_id, _workers(access))
    return _summary(access.project, run_id)


@router.post("/runs/{run_id}/copy", status_code=status.HTTP_201_CREATED)
def copy_run(run_id: int, access: ProjectDep, body: CopyBody | None = None) -> dict[str, Any]:
    """A new draft with the run's protocol, parameters (changed by ``params``) and inputs."""
    run = access.run(run_id)
    body = body or CopyBody()
    links: dict[str, list[InputLink]] = {}
    for edge in sorted(run.inputs, key=lambda e: (e.name, e.position)):
        links.setdefault(edge.name, []).append(InputLink(edge.source_run_id, edge.source_output))
    label = body.label if body.label is not None else run.label
    new_id = access.project.create_draft(
        run.protocol, {**run.params, **body.params}, links, label, body.seed
    )
    return _details(access.project, new_id)


@router.delete("/runs/{run_id}")
def delete_run(run_id: int, access: ProjectDep) -> dict[str, Any]:
    """Delete a run that is not active and feeds no other run, with its folder."""
    run = access.run(run_id)
    project = access.project
    if refresh_status(project, run_id) in ACTIVE:
        raise HTTPException(status.HTTP_409_CONFLICT, f"run {run_id} is active; stop it first")
    with project.session(write=True) as s:
        users = sorted(
            set(s.scalars(select(db.RunInput.run_id).where(db.RunInput.source_run_id == run_id)))
        )
        if users:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"run {run_id} feeds runs {', '.join(map(str, users))}; delete them first",
            )
        row = s.get(db.Run, run_id)
        if row is not None:
            s.delete(row)
    try:
        folder = resolve_inside(project.root, run.run_dir) if run.run_dir else None
    except PathEscapeError:
        folder = None
    if folder is not None and folder != project.root.resolve():
        shutil.rmtree(folder, ignore_errors=True)
    return {"deleted": run_id}


def read_log_chunk(path: Any, offset: int, max_bytes: int) -> tuple[str, int, int]:
    """Text of a log from byte ``offset`` (whole lines when cut), next offset, and file size."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "", 0, 0
    offset = min(offset, size)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(max_bytes)
    if len(data) == max_bytes and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]
    return data.decode(errors="replace"), offset + len(data), size


@router.get("/runs/{run_id}/log")
def run_log(
    run_id: int,
    access: ProjectDep,
    offset: int = Query(0, ge=0, description="byte offset to read from (next_offset of before)"),
) -> dict[str, Any]:
    """A piece of the run's log from ``offset``; poll again from ``next_offset``."""
    run = access.run(run_id)
    try:
        path = resolve_inside(access.project.root, run.log_path)
    except PathEscapeError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} has no log") from exc
    limit = access.state.settings.log_chunk_bytes
    text, next_offset, size = read_log_chunk(path, offset, limit)
    return {"run": run_id, "offset": offset, "next_offset": next_offset, "size": size, "text": text}


@router.get("/workflow", tags=["workflows"])
def get_workflow(
    access: ProjectDep, run: list[int] | None = Query(None, description="runs (default all)")
) -> dict[str, Any]:
    """The workflow (protocols, versions, params, seeds, links) as a JSON document."""
    try:
        return export_workflow(access.project, run)
    except ProjectError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.post("/workflow", tags=["workflows"], status_code=status.HTTP_201_CREATED)
def post_workflow(
    access: ProjectDep, workflow: dict[str, Any] = Body(..., description="a workflow document")
) -> dict[str, Any]:
    """Import a workflow as draft runs; returns their ids in order."""
    try:
        ids = import_workflow(access.project, workflow)
    except (KeyError, TypeError, AttributeError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"the workflow is malformed ({exc!r})"
        ) from exc
    return {"runs": ids}
