"""A run's coordinator: plans steps, skips those already done, runs the rest, registers outputs.

It runs in the run's own OS process (see :mod:`cryostack.execution.launch`), so a crash in a
protocol never takes down the CLI or a server. Completion of each step is recorded in one
transaction after its files are in place; a run killed at any moment continues from what was
recorded, giving the same outputs as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from types import FrameType
from typing import Any

from cryostack.core.environment import device_info, software_versions
from cryostack.core.project import ABORTED, FAILED, FINISHED, RUNNING, Project, ProjectError
from cryostack.core.protocol import Protocol, RunContext, StepSpec, step_context, step_signature
from cryostack.core.registry import get_protocol
from cryostack.execution.executor import Executor, TaskResult, TaskSpec


class RunAborted(Exception):
    """Raised in the coordinator when it receives SIGTERM (``cryostack stop``)."""


def _raise_abort(signum: int, _frame: FrameType | None) -> None:
    raise RunAborted(f"received signal {signum}")


def check_plan(steps: list[StepSpec]) -> None:
    keys = [s.key for s in steps]
    if len(set(keys)) != len(keys):
        raise ProjectError("protocol planned two steps with the same key")
    known: set[str] = set()
    for step in steps:
        for dep in step.depends_on:
            if dep not in known:
                raise ProjectError(
                    f"step {step.key} depends on {dep}, which is not planned before it"
                )
        known.add(step.key)


def step_seed(run_seed: int, key: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{run_seed}:{key}".encode()).digest()[:4], "little")


def execute_run(
    project: Project, run_id: int, make_executor: Callable[[], Executor], log: Callable[[str], None]
) -> str:
    """Execute (or continue) a queued run to its end; returns the final status."""
    run = project.run(run_id)
    protocol = get_protocol(run.protocol)
    ctx = project.run_context(run_id)
    ctx.run_path.mkdir(parents=True, exist_ok=True)
    executor: Executor | None = None
    try:
        executor = make_executor()
        project.set_status(
            run_id,
            RUNNING,
            "run process started",
            pid=os.getpid(),
            host=socket.gethostname(),
            software=software_versions(protocol.external_programs),
            device=device_info(),
            executor=executor.describe(),
            error=None,
        )
        steps = protocol().plan(ctx)
        check_plan(steps)
        project.update_run(run_id, n_steps=len(steps))
        failed = _run_steps(project, protocol, ctx, steps, executor, log)
        results = {k: st.result for k, st in project.done_steps(run_id).items()}
        item_failures = [s for s in failed if s.item is not None]
        step_failures = [s for s in failed if s.item is None]
        items_ok = any(s.item is not None and s.key in results for s in steps)
        if step_failures or (item_failures and not items_ok):
            names = ", ".join(s.key for s in failed[:10])
            message = f"{len(failed)} step(s) failed: {names}"
            project.set_status(run_id, FAILED, message, error=message)
            return FAILED
        log(f"all {len(steps)} steps done; gathering outputs")
        outputs = protocol().finish(
            ctx, {k: results[k] for k in (s.key for s in steps) if k in results}
        )
        project.register_outputs(run_id, outputs)
        message = "finished"
        if item_failures:
            message = f"finished; {len(item_failures)} item(s) failed: " + ", ".join(
                f"{s.item}" for s in item_failures[:20]
            )
        project.set_status(run_id, FINISHED, message)
        log(message)
        return FINISHED
    except RunAborted as exc:
        log(f"aborted: {exc}")
        if executor is not None:
            executor.shutdown(cancel=True)
            executor = None
        project.set_status(run_id, ABORTED, "stopped by user")
        return ABORTED
    except Exception as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        project.set_status(run_id, FAILED, f"{type(exc).__name__}: {exc}", error=str(exc))
        return FAILED
    finally:
        if executor is not None:
            executor.shutdown()


def _run_steps(
    project: Project,
    protocol: type[Protocol],
    ctx: RunContext,
    steps: list[StepSpec],
    executor: Executor,
    log: Callable[[str], None],
) -> list[StepSpec]:
    """Run the steps not yet done (in dependency order, filling the executor); return failures."""
    done = project.done_steps(ctx.run_id)
    signatures = {s.key: step_signature(protocol, ctx, s) for s in steps}
    finished: set[str] = set()
    for s in steps:
        prior = done.get(s.key)
        if prior and prior.signature == signatures[s.key] and ctx.step_dir(s.key).is_dir():
            finished.add(s.key)
    if finished:
        log(f"continuing: {len(finished)} of {len(steps)} steps already done")
    pending = [s for s in steps if s.key not in finished]
    failed: list[StepSpec] = []
    failed_keys: set[str] = set()
    running: dict[Future[TaskResult], StepSpec] = {}
    threads_free, gpus_free = executor.cpu_threads, executor.gpu_slots
    gpu_ids = list(range(executor.gpu_slots))
    gpu_of: dict[str, int] = {}
    while pending or running:
        for s in list(pending):
            if any(d in failed_keys for d in s.depends_on):
                pending.remove(s)
                failed.append(s)
                failed_keys.add(s.key)
                log(f"step {s.key} skipped: a step it depends on failed")
                continue
            if not all(d in finished for d in s.depends_on):
                continue
            threads = min(s.threads, executor.cpu_threads)
            use_gpu = s.gpu and executor.gpu_slots > 0
            if running and (threads > threads_free or (use_gpu and gpus_free == 0)):
                continue
            device = "cpu"
            if use_gpu:
                gpu = gpu_ids.pop(0)
                gpu_of[s.key] = gpu
                gpus_free -= 1
                device = f"cuda:{gpu}"
            threads_free -= threads
            sctx = step_context(
                ctx, s, device=device, threads=threads, step_seed=step_seed(ctx.seed, s.key)
            )
            task = TaskSpec(protocol.id, sctx, signatures[s.key])
            running[executor.submit(task)] = s
            pending.remove(s)
        if not running:
            break
        done_futures, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for fut in done_futures:
            s = running.pop(fut)
            threads_free += min(s.threads, executor.cpu_threads)
            if s.key in gpu_of:
                gpu_ids.append(gpu_of.pop(s.key))
                gpus_free += 1
            res = _future_result(fut, s)
            status = "done" if res.ok else "failed"
            project.record_step(
                ctx.run_id,
                s.key,
                signatures[s.key],
                status,
                res.result,
                res.error,
                res.duration_s,
                res.worker,
            )
            if res.ok:
                finished.add(s.key)
                log(f"step {s.key} done in {res.duration_s:.2f} s")
            else:
                failed.append(s)
                failed_keys.add(s.key)
                log(f"step {s.key} FAILED: {res.error}")
    return failed


def _future_result(fut: Future[TaskResult], step: StepSpec) -> TaskResult:
    try:
        return fut.result()
    except Exception as exc:  # the worker process died (e.g. out of memory)
        return TaskResult(step.key, False, {}, f"worker died: {type(exc).__name__}: {exc}")


def install_abort_handler() -> None:
    signal.signal(signal.SIGTERM, _raise_abort)
    signal.signal(signal.SIGINT, _raise_abort)


def timestamped(log_file: Any) -> Callable[[str], None]:
    def log(message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log_file.write(f"{stamp} {message}\n")
        log_file.flush()

    return log


def run_in_this_process(project: Project, run_id: int, executor: Executor | None = None) -> str:
    """Execute a queued run here (used by the run process and by tests of the coordinator)."""
    from cryostack.execution.local import LocalExecutor

    run = project.run(run_id)
    log_path = project.path(run.log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as f:
        return execute_run(
            project, run_id, (lambda: executor) if executor else LocalExecutor, timestamped(f)
        )
