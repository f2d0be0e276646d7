"""Helpers shared by the CLI commands: error reporting, option parsing, progress."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cryostack.core.project import InputLink, Project, ProjectError, ValidationError
from cryostack.core.registry import UnknownProtocolError

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="project folder")]
F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def handle_errors(func: F) -> F:
    """Turn user-facing errors into a clear message and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValidationError as exc:
            err_console.print("[bold red]error:[/] the run is not valid:")
            for problem in exc.problems:
                err_console.print(f"  - {problem}")
            raise typer.Exit(2) from exc
        except (ProjectError, UnknownProtocolError, FileNotFoundError, ValueError) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def open_project(directory: Path) -> Project:
    return Project.open(directory)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are JSON when they parse as JSON, strings otherwise."""
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValidationError([f"--set {item!r} is not KEY=VALUE"])
        key, value = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def parse_inputs(items: list[str]) -> dict[str, list[InputLink]]:
    """``NAME=RUN[.OUTPUT]`` pairs; a name given twice binds several outputs."""
    inputs: dict[str, list[InputLink]] = {}
    for item in items:
        if "=" not in item:
            raise ValidationError([f"--input {item!r} is not NAME=RUN[.OUTPUT]"])
        name, ref = item.split("=", 1)
        inputs.setdefault(name.strip(), []).append(InputLink.parse(ref))
    return inputs


def wait_with_progress(project: Project, run_id: int, console: Console) -> str:
    """Show a progress bar of a run's steps until it ends; return the final status."""
    from cryostack.execution.launch import TERMINAL, refresh_status

    with Progress(
        TextColumn("run {task.fields[run]} {task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("run", total=None, run=run_id, status="queued")
        while True:
            status = refresh_status(project, run_id)
            run = project.run(run_id)
            done = project.count_steps(run_id).get("done", 0)
            progress.update(task, total=run.n_steps, completed=done, status=status)
            if status in TERMINAL:
                break
            time.sleep(0.3)
    run = project.run(run_id)
    last = run.history[-1].message if run.history else ""
    detail = f": {last}" if last and last != status else ""
    console.print(f"run {run_id} {status}{detail}")
    return status
