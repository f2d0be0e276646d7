"""The local executor: a pool of worker processes with CPU-thread and GPU slots."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from cryostack.execution.executor import Executor, TaskResult, TaskSpec, execute_task


def _worker_init() -> None:
    # Workers use the threads a step asks for; start lean so a pool never oversubscribes cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class LocalExecutor(Executor):
    """Runs steps in ``workers`` processes (spawned: safe with torch and CUDA).

    ``cpu_threads`` is the number of CPU threads the coordinator may hand out at once (a step
    asking for 2 threads takes 2 slots); ``gpu_slots`` the number of CUDA devices to use.
    """

    def __init__(
        self, workers: int | None = None, cpu_threads: int | None = None, gpus: int | None = None
    ):
        cores = os.cpu_count() or 1
        self.cpu_threads = cpu_threads or cores
        self.workers = workers or self.cpu_threads
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.gpu_slots = gpus
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )

    def submit(self, task: TaskSpec) -> Future[TaskResult]:
        return self._pool.submit(execute_task, task)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "workers": self.workers}
