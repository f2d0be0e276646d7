"""The ``cryostack`` command line: projects, protocols, runs, exports and workflows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cryostack.cli.common import (
    ProjectOpt,
    fail,
    handle_errors,
    open_project,
    parse_inputs,
    parse_sets,
    wait_with_progress,
)
from cryostack.cli.serve import admin_app, serve
from cryostack.core.registry import broken_plugins, get_protocol, protocol_classes

app = typer.Typer(
    name="cryostack",
    help="cryostack: cryo-EM workflows from movies to validated maps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
project_app = typer.Typer(help="Create and inspect projects.", no_args_is_help=True)
workflow_app = typer.Typer(help="Export and import workflows.", no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(workflow_app, name="workflow")
app.command("serve")(serve)
app.add_typer(admin_app, name="admin")
console = Console()


@project_app.command("create")
@handle_errors
def project_create(
    directory: Path,
    name: Annotated[str | None, typer.Option(help="project name (default: folder name)")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://... (default SQLite)"),
    ] = None,
) -> None:
    """Create a project in DIRECTORY (new or empty)."""
    from cryostack.core.project import Project

    project = Project.create(directory, name=name, database_url=database_url)
    console.print(f"created project [bold]{project.name}[/] in {project.root}")


@project_app.command("show")
@handle_errors
def project_show(directory: Path, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Summarise a project: its runs by status and their outputs."""
    from cryostack.core.summaries import project_summary

    project = open_project(directory)
    summary = project_summary(project)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(f"[bold]{summary['name']}[/] ({summary['root']})")
    for status, n in summary["runs_by_status"].items():
        console.print(f"  {status}: {n}")
    for out in summary["outputs"]:
        console.print(f"  run {out['run']}.{out['name']}: {out['type']} ({out['n_items']} items)")


@app.command("protocols")
@handle_errors
def protocols(
    as_json: Annotated[bool, typer.Option("--json", help="print the catalogue as JSON")] = False,
    schema: Annotated[
        str | None, typer.Option(help="print one protocol's parameter schema")
    ] = None,
) -> None:
    """List the protocol catalogue by category."""
    from cryostack.core.summaries import protocol_description

    if schema:
        print(json.dumps(protocol_description(get_protocol(schema)), indent=2))
        return
    classes = protocol_classes()
    if as_json:
        print(json.dumps([protocol_description(c) for c in classes.values()], indent=2))
        return
    table = Table("category", "id", "name", "inputs", "outputs")
    for cls in sorted(classes.values(), key=lambda c: (c.category, c.id)):
        ins = ", ".join(f"{n}: {'|'.join(s.types)}" for n, s in cls.inputs.items())
        outs = ", ".join(f"{n}: {s.type}" for n, s in cls.outputs.items())
        table.add_row(cls.category, cls.id, cls.name, ins, outs)
    console.print(table)
    for name, problem in broken_plugins().items():
        console.print(f"[yellow]plugin {name} is broken:[/] {problem}")


@app.command("run")
@handle_errors
def run(
    protocol: str,
    project_dir: ProjectOpt = Path("."),
    inputs: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="NAME=RUN[.OUTPUT], repeatable")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="KEY=VALUE parameter, repeatable")
    ] = None,
    params_file: Annotated[
        Path | None, typer.Option(help="JSON file of parameters (--set overrides)")
    ] = None,
    label: Annotated[str, typer.Option(help="a label for the run")] = "",
    seed: Annotated[
        int | None, typer.Option(help="random seed (default: drawn and recorded)")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the run to end")] = False,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Validate and launch a run of PROTOCOL; prints the new run's id."""
    from cryostack.execution.launch import launch

    project = open_project(project_dir)
    params: dict[str, Any] = {}
    if params_file:
        params.update(json.loads(params_file.read_text()))
    params.update(parse_sets(sets or []))
    run_id = project.create_run(protocol, params, parse_inputs(inputs or []), label, seed)
    launch(project, run_id, workers)
    print(run_id)
    if wait:
        wait_with_progress(project, run_id, console)


@app.command("runs")
@handle_errors
def runs(
    project_dir: ProjectOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the runs of a project."""
    from cryostack.core.summaries import run_summary
    from cryostack.execution.launch import refresh_status

    project = open_project(project_dir)
    rows = []
    for r in project.runs():
        refresh_status(project, r.id)
        rows.append(run_summary(project.run(r.id)))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "protocol", "status", "label", "inputs", "outputs", "duration")
    for row in rows:
        ins = ", ".join(f"{i['name']}={i['run']}.{i['output']}" for i in row["inputs"])
        outs = ", ".join(o["name"] for o in row["outputs"])
        dur = f"{row['duration_s']:.1f} s" if row["duration_s"] is not None else ""
        table.add_row(str(row["id"]), row["protocol"], row["status"], row["label"], ins, outs, dur)
    console.print(table)


@app.command("show")
@handle_errors
def show(run_id: int, project_dir: ProjectOpt = Path(".")) -> None:
    """Everything recorded about a run, as JSON."""
    from cryostack.core.summaries import run_details

    project = open_project(project_dir)
    print(json.dumps(run_details(project, run_id), indent=2, default=str))


@app.command("continue")
@handle_errors
def continue_(
    run_id: int,
    project_dir: ProjectOpt = Path("."),
    wait: Annotated[bool, typer.Option("--wait")] = False,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Continue a failed, stopped or crashed run, skipping the steps already done."""
    from cryostack.execution.launch import continue_run

    project = open_project(project_dir)
    continue_run(project, run_id, workers)
    print(run_id)
    if wait:
        wait_with_progress(project, run_id, console)


@app.command("restart")
@handle_errors
def restart(
    run_id: int,
    project_dir: ProjectOpt = Path("."),
    wait: Annotated[bool, typer.Option("--wait")] = False,
) -> None:
    """Run a run again from scratch with the same parameters and inputs."""
    from cryostack.execution.launch import restart_run

    project = open_project(project_dir)
    restart_run(project, run_id)
    print(run_id)
    if wait:
        wait_with_progress(project, run_id, console)


@app.command("stop")
@handle_errors
def stop(run_id: int, project_dir: ProjectOpt = Path(".")) -> None:
    """Stop a queued or running run."""
    from cryostack.execution.launch import stop as stop_run

    project = open_project(project_dir)
    console.print(f"run {run_id}: {stop_run(project, run_id)}")


@app.command("log")
@handle_errors
def log(run_id: int, project_dir: ProjectOpt = Path(".")) -> None:
    """Print a run's log."""
    project = open_project(project_dir)
    path = project.path(project.run(run_id).log_path)
    if not path.exists():
        fail(f"run {run_id} has no log yet")
    print(path.read_text(errors="replace"), end="")


@workflow_app.command("export")
@handle_errors
def workflow_export(
    out: Path,
    project_dir: ProjectOpt = Path("."),
    run_ids: Annotated[
        list[int] | None, typer.Option("--run", help="runs to export (default all)")
    ] = None,
) -> None:
    """Export runs (protocol, version, params, seed, links) as a JSON workflow."""
    from cryostack.core.workflow import export_workflow

    project = open_project(project_dir)
    workflow = export_workflow(project, run_ids)
    out.write_text(json.dumps(workflow, indent=2) + "\n")
    console.print(f"exported {len(workflow['runs'])} runs to {out}")


@workflow_app.command("import")
@handle_errors
def workflow_import(
    workflow_file: Path,
    project_dir: ProjectOpt = Path("."),
    run_now: Annotated[bool, typer.Option("--run/--no-run", help="run the imported runs")] = False,
) -> None:
    """Import a JSON workflow as draft runs; with --run, run them in order."""
    from cryostack.core.workflow import import_workflow, load_workflow
    from cryostack.execution.launch import launch

    project = open_project(project_dir)
    ids = import_workflow(project, load_workflow(workflow_file))
    console.print(f"imported runs {', '.join(map(str, ids))}")
    if run_now:
        for run_id in ids:
            launch(project, run_id)
            status = wait_with_progress(project, run_id, console)
            if status != "finished":
                fail(f"run {run_id} {status}; see `cryostack log {run_id}`")


@app.command("export")
@handle_errors
def export(
    ref: str,
    out: Path,
    project_dir: ProjectOpt = Path("."),
    fmt: Annotated[str, typer.Option("--format", help="star, cs or mrc")] = "star",
) -> None:
    """Export RUN[.OUTPUT] as RELION STAR, cryoSPARC .cs or MRC."""
    from cryostack.cli.exporting import export_output

    project = open_project(project_dir)
    written = export_output(project, ref, out, fmt)
    console.print(f"wrote {written}")


@app.command("demo")
@handle_errors
def demo(
    directory: Annotated[Path, typer.Argument(help="project folder to create")] = Path(
        "demo-project"
    ),
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Create a project and run the longest pipeline cryostack has, on simulated data."""
    from cryostack.cli.demo import run_demo

    run_demo(directory, console, workers)


def main() -> None:
    app()
