"""The Executor interface and the task that runs one step in a worker.

A task (:class:`TaskSpec`) is picklable and refers to files by project-relative paths, so an
executor may run it in a local process, a Dask worker or a Slurm job on another machine. Workers
never touch the project database: they write the step's files into a private work folder, which
becomes the step's folder by an atomic rename when the step succeeds, and return a
:class:`TaskResult`; the run's coordinator records it.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryostack.core.protocol import StepContext


@dataclass(frozen=True)
class TaskSpec:
    """One step to execute: the protocol id and the step's full context."""

    protocol_id: str
    context: StepContext
    signature: str

    @property
    def key(self) -> str:
        return self.context.step.key


@dataclass
class TaskResult:
    key: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    worker: str = ""


class Executor(ABC):
    """Runs tasks; reports the resources it offers so the coordinator can fill them."""

    cpu_threads: int = 1
    gpu_slots: int = 0

    @abstractmethod
    def submit(self, task: TaskSpec) -> Future[TaskResult]:
        """Start a task; the future resolves to its result (never raises for a step's error)."""

    @abstractmethod
    def shutdown(self, cancel: bool = False) -> None:
        """Release workers; ``cancel`` abandons tasks still queued or running."""

    def describe(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "cpu_threads": self.cpu_threads,
            "gpus": self.gpu_slots,
        }


def execute_task(task: TaskSpec, project_root: str | None = None) -> TaskResult:
    """Run one step (in a worker process). ``project_root`` remaps the project on this machine."""
    from cryostack.core.registry import get_protocol

    started = time.perf_counter()
    ctx = task.context
    if project_root is not None:
        ctx = replace(ctx, project_root=Path(project_root))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    tmp_root = ctx.run_path / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work_dir = tmp_root / f"{ctx.step_dir(task.key).name}.{uuid.uuid4().hex[:8]}"
    work_dir.mkdir()
    ctx = replace(ctx, work_dir=work_dir)
    try:
        _configure_threads(ctx.threads)
        result = get_protocol(task.protocol_id)().run_step(ctx)
        final = ctx.step_dir(task.key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # left by an attempt whose completion was never recorded
            shutil.rmtree(final)
        os.replace(work_dir, final)
        return TaskResult(task.key, True, result, None, time.perf_counter() - started, worker)
    except Exception as exc:  # a step's failure is data for the coordinator, not a crash
        shutil.rmtree(work_dir, ignore_errors=True)
        message = f"{type(exc).__name__}: {exc}"
        ctx.log(f"FAILED {message}\n{traceback.format_exc()}")
        return TaskResult(task.key, False, {}, message, time.perf_counter() - started, worker)


def _configure_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(max(1, threads))
