"""Starting, stopping, continuing and restarting runs, each in its own OS process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cryostack.core.project import (
    ABORTED,
    ACTIVE,
    DRAFT,
    FAILED,
    FINISHED,
    QUEUED,
    Project,
    ProjectError,
)

TERMINAL = (FINISHED, FAILED, ABORTED)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs on this host (a zombie counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refresh_status(project: Project, run_id: int) -> str:
    """Mark an active run whose process is gone from this host as failed; return the status."""
    run = project.run(run_id)
    on_this_host = run.host in (None, socket.gethostname())
    if run.status in ACTIVE and run.pid and on_this_host and not process_alive(run.pid):
        project.set_status(
            run_id, FAILED, "run process ended unexpectedly", error="run process ended"
        )
        return FAILED
    return run.status


def launch(project: Project, run_id: int, workers: int | None = None) -> subprocess.Popen[bytes]:
    """Queue a draft (or continued) run and start its process, detached from the caller."""
    run = project.run(run_id)
    if run.status == DRAFT:
        project.prepare_launch(run_id)
    if run.status != QUEUED:
        project.set_status(run_id, QUEUED, "launched")
    log_path = project.path(run.log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cryostack.execution.run_process", str(project.root), str(run_id)]
    if workers:
        cmd += ["--workers", str(workers)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=project.root,
        )
    with project.session(write=True) as s:
        from cryostack.core import db

        row = s.get(db.Run, run_id)
        if row is not None and row.status == QUEUED:
            row.pid, row.host = proc.pid, socket.gethostname()
    return proc


def wait_for(
    project: Project, run_id: int, poll_s: float = 0.5, timeout_s: float | None = None
) -> str:
    """Block until the run reaches a final status; return it."""
    start = time.monotonic()
    while True:
        status = refresh_status(project, run_id)
        if status in TERMINAL:
            return status
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"run {run_id} still {status} after {timeout_s} s")
        time.sleep(poll_s)


def stop(project: Project, run_id: int, grace_s: float = 20.0) -> str:
    """Stop a queued or running run (SIGTERM to its process group, SIGKILL after a grace time)."""
    run = project.run(run_id)
    if run.status == DRAFT:
        project.set_status(run_id, ABORTED, "stopped before launch")
        return ABORTED
    if run.status not in ACTIVE:
        raise ProjectError(f"run {run_id} is {run.status}; only queued or running runs stop")
    if run.pid and process_alive(run.pid):
        _signal_group(run.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and process_alive(run.pid):
            time.sleep(0.2)
        if process_alive(run.pid):
            _signal_group(run.pid, signal.SIGKILL)
    status = project.run(run_id).status
    if status in ACTIVE:
        project.set_status(run_id, ABORTED, "stopped by user")
        return ABORTED
    return status


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def continue_run(
    project: Project, run_id: int, workers: int | None = None
) -> subprocess.Popen[bytes]:
    """Resume a failed, aborted or crashed run: steps already done are skipped."""
    status = refresh_status(project, run_id)
    if status in ACTIVE:
        raise ProjectError(f"run {run_id} is still {status}; stop it first")
    if status == FINISHED:
        raise ProjectError(f"run {run_id} already finished; use restart to run it again")
    if status == DRAFT:
        return launch(project, run_id, workers)
    project.set_status(run_id, QUEUED, "continue")
    return launch(project, run_id, workers)


def restart_run(
    project: Project, run_id: int, workers: int | None = None
) -> subprocess.Popen[bytes]:
    """Run again from scratch: forget steps and outputs, remove the run's files (log kept)."""
    status = refresh_status(project, run_id)
    if status in ACTIVE:
        raise ProjectError(f"run {run_id} is still {status}; stop it first")
    run = project.run(run_id)
    project.reset_run(run_id)
    run_path = project.path(run.run_dir)
    for child in ("steps", "outputs", "tmp"):
        shutil.rmtree(run_path / child, ignore_errors=True)
    if status != DRAFT:
        project.set_status(run_id, QUEUED, "restart")
    return launch(project, run_id, workers)
