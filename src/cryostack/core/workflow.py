"""Workflows: a project's runs as JSON (protocol, version, params, seed, links), and back.

A workflow refers to runs by keys local to the file (``"r1"``, ``"r2"``...), so it imports into
any project; links name the key and output of the producing run. Deterministic protocols re-run
from an imported workflow reproduce the original output hashes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryostack.core.project import InputLink, Project, ProjectError, ValidationError
from cryostack.core.registry import get_protocol

WORKFLOW_FORMAT = "cryostack-workflow"
WORKFLOW_VERSION = 1


def export_workflow(project: Project, run_ids: list[int] | None = None) -> dict[str, Any]:
    """Describe runs (default: all) and the links between them; linked runs must be included."""
    runs = {r.id: r for r in project.runs()}
    chosen = sorted(run_ids) if run_ids else sorted(runs)
    missing = [i for i in chosen if i not in runs]
    if missing:
        raise ProjectError(f"no run {missing[0]} in project {project.root}")
    key = {run_id: f"r{n}" for n, run_id in enumerate(chosen, start=1)}
    entries = []
    for run_id in chosen:
        run = runs[run_id]
        inputs: dict[str, list[dict[str, str]]] = {}
        for edge in sorted(run.inputs, key=lambda e: (e.name, e.position)):
            if edge.source_run_id not in key:
                raise ProjectError(
                    f"run {run_id} takes input from run {edge.source_run_id}, which is not exported"
                )
            inputs.setdefault(edge.name, []).append(
                {"run": key[edge.source_run_id], "output": edge.source_output}
            )
        entries.append(
            {
                "key": key[run_id],
                "protocol": run.protocol,
                "protocol_version": run.protocol_version,
                "label": run.label,
                "params": run.params,
                "seed": run.seed,
                "inputs": inputs,
            }
        )
    return {
        "format": WORKFLOW_FORMAT,
        "version": WORKFLOW_VERSION,
        "project": project.name,
        "runs": entries,
    }


def load_workflow(path: Path) -> dict[str, Any]:
    try:
        workflow: dict[str, Any] = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ProjectError(f"{path}: no such workflow file") from exc
    except json.JSONDecodeError as exc:
        raise ProjectError(f"{path}: not valid JSON ({exc})") from exc
    check_workflow(workflow, str(path))
    return workflow


def check_workflow(workflow: Any, source: str = "workflow") -> None:
    """Structural checks with messages naming the problem."""
    if not isinstance(workflow, dict) or workflow.get("format") != WORKFLOW_FORMAT:
        raise ProjectError(f"{source}: not a cryostack workflow (format != {WORKFLOW_FORMAT!r})")
    if workflow.get("version") != WORKFLOW_VERSION:
        raise ProjectError(f"{source}: unsupported workflow version {workflow.get('version')}")
    keys: set[str] = set()
    for n, entry in enumerate(workflow.get("runs", [])):
        for field in ("key", "protocol", "params"):
            if field not in entry:
                raise ProjectError(f"{source}: run #{n + 1} has no {field!r}")
        for links in entry.get("inputs", {}).values():
            for link in links:
                if link.get("run") not in keys:
                    raise ProjectError(
                        f"{source}: run {entry['key']} links to {link.get('run')!r}, "
                        "which is not defined before it"
                    )
        keys.add(entry["key"])


def import_workflow(project: Project, workflow: dict[str, Any]) -> list[int]:
    """Create the workflow's runs as drafts, in order, with links mapped; return their ids.

    Runs whose inputs come from other runs of the workflow are validated against the protocol's
    parameters and input types now, and against the actual outputs when they launch.
    """
    check_workflow(workflow)
    ids: dict[str, int] = {}
    created: list[int] = []
    for entry in workflow["runs"]:
        protocol = get_protocol(entry["protocol"])
        if entry.get("protocol_version", protocol.version) != protocol.version:
            raise ProjectError(
                f"run {entry['key']}: workflow has {protocol.id} version "
                f"{entry['protocol_version']}, this cryostack has {protocol.version}"
            )
        links = {
            name: [InputLink(ids[link["run"]], link["output"]) for link in refs]
            for name, refs in entry.get("inputs", {}).items()
        }
        try:
            run_id = project.create_draft(
                protocol.id, entry["params"], links, entry.get("label", ""), entry.get("seed")
            )
        except ValidationError as exc:
            raise ValidationError([f"run {entry['key']}: {p}" for p in exc.problems]) from exc
        ids[entry["key"]] = run_id
        created.append(run_id)
    return created
