"""JSON-ready descriptions of protocols, runs and projects (shared by the CLI and the web API)."""

from __future__ import annotations

from typing import Any

from cryostack.core import db
from cryostack.core.project import Project
from cryostack.core.protocol import Protocol
from cryostack.core.registry import get_protocol


def protocol_description(cls: type[Protocol]) -> dict[str, Any]:
    return {
        "id": cls.id,
        "name": cls.name,
        "category": cls.category,
        "version": cls.version,
        "help": cls.help,
        "citations": list(cls.citations),
        "params_schema": cls.Params.model_json_schema(),
        "inputs": {
            n: {
                "types": list(s.types),
                "help": s.help,
                "optional": s.optional,
                "multiple": s.multiple,
                "required_columns": list(s.required_columns),
            }
            for n, s in cls.inputs.items()
        },
        "outputs": {n: {"type": s.type, "help": s.help} for n, s in cls.outputs.items()},
    }


def run_summary(run: db.Run) -> dict[str, Any]:
    duration = None
    if run.started_at and run.finished_at:
        duration = (run.finished_at - run.started_at).total_seconds()
    return {
        "id": run.id,
        "protocol": run.protocol,
        "label": run.label,
        "status": run.status,
        "created_at": run.created_at.isoformat(),
        "duration_s": duration,
        "inputs": [
            {"name": i.name, "run": i.source_run_id, "output": i.source_output} for i in run.inputs
        ],
        "outputs": [
            {"name": o.name, "type": o.type, "n_items": o.n_items, "path": o.path}
            for o in run.outputs
        ],
    }


def run_details(project: Project, run_id: int) -> dict[str, Any]:
    run = project.run(run_id)
    cls = get_protocol(run.protocol)
    return {
        **run_summary(run),
        "protocol_version": run.protocol_version,
        "params": run.params,
        "seed": run.seed,
        "run_dir": run.run_dir,
        "log": run.log_path,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "pid": run.pid,
        "host": run.host,
        "error": run.error,
        "software": run.software,
        "device": run.device,
        "executor": run.executor,
        "citations": list(cls.citations),
        "input_hashes": {f"{i.name}[{i.position}]": i.content_hash for i in run.inputs},
        "outputs": [
            {
                "name": o.name,
                "type": o.type,
                "path": o.path,
                "n_items": o.n_items,
                "content_hash": o.content_hash,
                "meta": o.meta,
            }
            for o in run.outputs
        ],
        "steps": [
            {
                "key": s.key,
                "status": s.status,
                "duration_s": s.duration_s,
                "worker": s.worker,
                "error": s.error,
            }
            for s in run.steps
        ],
        "history": [{"status": h.status, "at": h.at, "message": h.message} for h in run.history],
    }


def project_summary(project: Project) -> dict[str, Any]:
    runs = project.runs()
    by_status: dict[str, int] = {}
    outputs = []
    for r in runs:
        by_status[r.status] = by_status.get(r.status, 0) + 1
        outputs += [
            {"run": r.id, "name": o.name, "type": o.type, "n_items": o.n_items} for o in r.outputs
        ]
    return {
        "name": project.name,
        "root": str(project.root),
        "meta": project.meta(),
        "n_runs": len(runs),
        "runs_by_status": by_status,
        "outputs": outputs,
    }
