"""Live updates of a project as server-sent events, by polling its database and a run's log.

``GET /api/projects/{id}/events`` streams:

- ``event: status`` with ``{"run", "status", "steps_done", "n_steps"}`` for every run at the
  start and whenever a run's status or count of done steps changes (new runs included);
- ``event: deleted`` with ``{"run"}`` when a run disappears;
- ``event: log`` with ``{"run", "offset", "next_offset", "text"}`` for new log text of the run
  named by ``?log_run=``, from ``?log_offset=`` on.

Comments (``: keep-alive``) keep idle connections open. A stream ends after ``sse_max_s``
seconds (the browser's EventSource reconnects by itself after ``retry`` ms), so a server never
holds a stream forever.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from cryostack.core import db
from cryostack.core.project import ACTIVE, Project
from cryostack.execution.launch import refresh_status
from cryostack.web.deps import ProjectDep
from cryostack.web.routes_runs import read_log_chunk
from cryostack.web.security import PathEscapeError, resolve_inside

router = APIRouter(prefix="/api/projects/{project_id}", tags=["events"])
KEEPALIVE_S = 15.0
RETRY_MS = 2000
LOG_EVENT_BYTES = 64 * 1024

Snapshot = dict[int, tuple[str, int, int | None]]


def format_event(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def project_snapshot(project: Project) -> Snapshot:
    """Status, number of done steps and planned steps of every run."""
    with project.session() as s:
        runs = list(s.execute(select(db.Run.id, db.Run.status, db.Run.n_steps)))
        done = dict(
            s.execute(
                select(db.Step.run_id, func.count(db.Step.id))
                .where(db.Step.status == "done")
                .group_by(db.Step.run_id)
            ).all()
        )
    for run_id, status, _ in runs:
        if status in ACTIVE:
            refresh_status(project, run_id)  # a crashed process shows as failed
    return {run_id: (status, int(done.get(run_id, 0)), n) for run_id, status, n in runs}


def snapshot_events(before: Snapshot, now: Snapshot) -> list[str]:
    events = []
    for run_id, (status, steps_done, n_steps) in sorted(now.items()):
        if before.get(run_id) != (status, steps_done, n_steps):
            data = {"run": run_id, "status": status, "steps_done": steps_done, "n_steps": n_steps}
            events.append(format_event("status", data))
    for run_id in sorted(set(before) - set(now)):
        events.append(format_event("deleted", {"run": run_id}))
    return events


def _log_path(access: ProjectDep, run_id: int | None) -> Any:
    if run_id is None:
        return None
    run = access.run(run_id)
    try:
        return resolve_inside(access.project.root, run.log_path)
    except PathEscapeError:
        return None


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def project_events(
    request: Request,
    access: ProjectDep,
    log_run: int | None = Query(None, description="also stream this run's log"),
    log_offset: int = Query(0, ge=0, description="byte offset to start the log from"),
) -> StreamingResponse:
    """Server-sent events of run status changes and new log text (see the module docs)."""
    project = access.project
    settings = access.state.settings
    log_path = _log_path(access, log_run)

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {RETRY_MS}\n\n"
        before: Snapshot = {}
        offset = log_offset
        start = last_sent = time.monotonic()
        while True:
            now = await run_in_threadpool(project_snapshot, project)
            # The log is read after the snapshot and sent before the status events, so a client
            # that stops at "finished" has received the log written before it.
            events = []
            if log_path is not None:
                text, offset_next, _ = await run_in_threadpool(
                    read_log_chunk, log_path, offset, LOG_EVENT_BYTES
                )
                if text:
                    data = {"run": log_run, "offset": offset, "next_offset": offset_next}
                    events.append(format_event("log", {**data, "text": text}))
                    offset = offset_next
            events += snapshot_events(before, now)
            before = now
            for event in events:
                yield event
            if events:
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            if time.monotonic() - start >= settings.sse_max_s or await request.is_disconnected():
                return
            await asyncio.sleep(settings.sse_poll_s)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
