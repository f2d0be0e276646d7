"""A project: a folder of data files plus a database of runs, outputs, steps and provenance.

The folder holds ``cryostack-project.json`` (name, format, database URL), the SQLite database
``project.db`` (unless a PostgreSQL URL is configured) and one folder per run under ``runs/``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, selectinload

import cryostack
from cryostack.core import db
from cryostack.core.datamodel import SetKind
from cryostack.core.environment import files_sha256
from cryostack.core.protocol import InputRef, OutputValue, Protocol, RunContext
from cryostack.core.registry import get_protocol

PROJECT_FILE = "cryostack-project.json"
PROJECT_FORMAT = 1

DRAFT, QUEUED, RUNNING, FINISHED, FAILED, ABORTED = (
    "draft",
    "queued",
    "running",
    "finished",
    "failed",
    "aborted",
)
ACTIVE = (QUEUED, RUNNING)
TRANSITIONS: dict[str, tuple[str, ...]] = {
    DRAFT: (QUEUED, ABORTED),
    QUEUED: (RUNNING, FAILED, ABORTED),
    RUNNING: (FINISHED, FAILED, ABORTED),
    FINISHED: (QUEUED,),  # restart
    FAILED: (QUEUED,),  # continue / restart
    ABORTED: (QUEUED,),
}


class ProjectError(Exception):
    """A user-facing problem with a project (missing, already exists, bad state...)."""


class ValidationError(ProjectError):
    """Parameters or inputs of a run are invalid; ``problems`` lists user-facing messages."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class InputLink:
    """A requested input: output ``output`` of run ``run_id`` (None: the run's only output)."""

    run_id: int
    output: str | None = None

    @classmethod
    def parse(cls, text: str) -> InputLink:
        m = re.fullmatch(r"(\d+)(?:\.([\w-]+))?", text.strip())
        if not m:
            raise ValidationError([f"input reference {text!r} is not RUN or RUN.OUTPUT"])
        return cls(int(m.group(1)), m.group(2))


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.absolute()}"


def upgrade_schema(engine: Engine) -> None:
    """Create or upgrade the project database to the newest schema (Alembic)."""
    from cryostack.core import migrations

    db.upgrade_to_head(engine, os.path.dirname(migrations.__file__))


class Project:
    """An open project. Use :meth:`create` or :meth:`open`."""

    def __init__(self, root: Path, engine: Engine, name: str):
        self.root = root.absolute()
        self.engine = engine
        self.name = name
        self._writer = engine.execution_options(immediate=True)

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls, root: str | Path, name: str | None = None, database_url: str | None = None
    ) -> Project:
        root = Path(root).absolute()
        if (root / PROJECT_FILE).exists():
            raise ProjectError(f"{root} already holds a cryostack project")
        if root.exists() and any(root.iterdir()):
            raise ProjectError(f"{root} exists and is not empty; choose a new folder")
        root.mkdir(parents=True, exist_ok=True)
        (root / "runs").mkdir(exist_ok=True)
        name = name or root.name
        config = {"format": PROJECT_FORMAT, "name": name, "database_url": database_url}
        engine = db.make_engine(database_url or sqlite_url(root / "project.db"))
        upgrade_schema(engine)
        project = cls(root, engine, name)
        with project.session(write=True) as s:
            s.merge(db.ProjectMeta(key="name", value=name))
            s.merge(db.ProjectMeta(key="created_at", value=datetime.now(UTC).isoformat()))
            s.merge(db.ProjectMeta(key="cryostack_version", value=cryostack.__version__))
        tmp = root / f".{PROJECT_FILE}.tmp"
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, root / PROJECT_FILE)
        return project

    @classmethod
    def open(cls, root: str | Path) -> Project:
        root = Path(root).absolute()
        config_path = root / PROJECT_FILE
        if not config_path.exists():
            raise ProjectError(f"{root} is not a cryostack project (no {PROJECT_FILE})")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ProjectError(f"{config_path}: not valid JSON ({exc})") from exc
        if config.get("format") != PROJECT_FORMAT:
            raise ProjectError(f"{config_path}: unsupported project format {config.get('format')}")
        url = config.get("database_url") or sqlite_url(root / "project.db")
        engine = db.make_engine(url)
        upgrade_schema(engine)
        return cls(root, engine, config.get("name", root.name))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """A transaction; ``write=True`` takes the write lock up front (SQLite BEGIN IMMEDIATE)."""
        with (
            Session(self._writer if write else self.engine, expire_on_commit=False) as s,
            s.begin(),
        ):
            yield s

    # -- queries -----------------------------------------------------------------------------
    def runs(self) -> list[db.Run]:
        with self.session() as s:
            q = (
                select(db.Run)
                .options(selectinload(db.Run.inputs), selectinload(db.Run.outputs))
                .order_by(db.Run.id)
            )
            return list(s.scalars(q))

    def run(self, run_id: int) -> db.Run:
        with self.session() as s:
            q = (
                select(db.Run)
                .where(db.Run.id == run_id)
                .options(
                    selectinload(db.Run.inputs),
                    selectinload(db.Run.outputs),
                    selectinload(db.Run.steps),
                    selectinload(db.Run.history),
                )
            )
            run = s.scalars(q).first()
        if run is None:
            raise ProjectError(f"run {run_id} does not exist in project {self.root}")
        return run

    def output(self, run_id: int, name: str | None = None) -> db.RunOutput:
        """A registered output; ``name=None`` means the run's only (or first declared) output."""
        run = self.run(run_id)
        if not run.outputs:
            raise ProjectError(f"run {run_id} ({run.protocol}, {run.status}) has no outputs")
        if name is None:
            if len(run.outputs) == 1:
                return run.outputs[0]
            names = list(get_protocol(run.protocol).outputs)
            by_name = {o.name: o for o in run.outputs}
            for n in names:
                if n in by_name:
                    return by_name[n]
            return run.outputs[0]
        for out in run.outputs:
            if out.name == name:
                return out
        available = ", ".join(o.name for o in run.outputs)
        raise ProjectError(f"run {run_id} has no output {name!r} (it has: {available})")

    def read_output_set(self, run_id: int, name: str | None = None) -> Any:
        """An output item set (:class:`~cryostack.core.datamodel.ItemSet`)."""
        from cryostack.core.sets import read_set

        out = self.output(run_id, name)
        if out.type not in {k.value for k in SetKind}:
            raise ProjectError(f"output {run_id}.{out.name} is a {out.type}, not an item set")
        return read_set(self.path(out.path))

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    # -- creating runs -----------------------------------------------------------------------
    def validate(
        self,
        protocol: type[Protocol],
        params: dict[str, Any],
        inputs: dict[str, list[InputLink]],
        seed: int = 0,
    ) -> RunContext:
        """Check params and inputs; return the run context a launch would use, or raise."""
        problems: list[str] = []
        model = self._validate_params(protocol, params, problems)
        if model is None:
            raise ValidationError(problems)
        resolved: dict[str, tuple[InputRef, ...]] = {}
        for name in inputs:
            if name not in protocol.inputs:
                known = ", ".join(protocol.inputs) or "none"
                problems.append(f"{protocol.id} has no input {name!r} (inputs: {known})")
        for name, spec in protocol.inputs.items():
            links = inputs.get(name, [])
            if not links and not spec.optional:
                problems.append(f"input {name!r} is required ({' or '.join(spec.types)})")
            if len(links) > 1 and not spec.multiple:
                problems.append(f"input {name!r} takes one {' or '.join(spec.types)}")
            refs = []
            for link in links:
                ref = self._resolve_link(name, link, spec.types, spec.required_columns, problems)
                if ref is not None:
                    refs.append(ref)
            if refs:
                resolved[name] = tuple(refs)
        if problems:
            raise ValidationError(problems)
        ctx = RunContext(self.root, 0, "", model, resolved, seed)
        problems = protocol().check(ctx)
        if problems:
            raise ValidationError(problems)
        return ctx

    def _resolve_link(
        self,
        name: str,
        link: InputLink,
        types: tuple[str, ...],
        required_columns: tuple[str, ...],
        problems: list[str],
    ) -> InputRef | None:
        try:
            out = self.output(link.run_id, link.output)
        except ProjectError as exc:
            problems.append(f"input {name!r}: {exc}")
            return None
        if out.type not in types:
            problems.append(
                f"input {name!r} needs {' or '.join(types)}, but run {link.run_id}'s output "
                f"{out.name!r} is a {out.type}"
            )
            return None
        if required_columns:
            from cryostack.core.sets import read_set_info

            columns = set(read_set_info(self.path(out.path)).column_names)
            missing = [c for c in required_columns if c not in columns]
            if missing:
                problems.append(
                    f"input {name!r}: run {link.run_id}'s {out.name} lacks {', '.join(missing)}"
                )
                return None
        return InputRef(
            name=name,
            source_run_id=link.run_id,
            source_output=out.name,
            type=out.type,
            path=out.path,
            content_hash=out.content_hash,
            n_items=out.n_items,
            meta=dict(out.meta),
        )

    def create_run(
        self,
        protocol_id: str,
        params: dict[str, Any] | None = None,
        inputs: dict[str, list[InputLink]] | None = None,
        label: str = "",
        seed: int | None = None,
    ) -> int:
        """Validate (inputs must be complete outputs) and record a new ``draft`` run; return its id.

        Nothing is written to the project when validation fails.
        """
        protocol = get_protocol(protocol_id)
        seed = random.SystemRandom().randrange(2**31) if seed is None else seed
        ctx = self.validate(protocol, params or {}, inputs or {}, seed)
        edges: list[tuple[str, int, int, str, str | None]] = [
            (ref.name, pos, ref.source_run_id, ref.source_output, ref.content_hash)
            for refs in ctx.inputs.values()
            for pos, ref in enumerate(refs)
        ]
        return self._insert_run(protocol, ctx.params, edges, label, seed)

    def create_draft(
        self,
        protocol_id: str,
        params: dict[str, Any],
        inputs: dict[str, list[InputLink]],
        label: str = "",
        seed: int | None = None,
    ) -> int:
        """Record a draft whose inputs may come from runs that have not run yet.

        Parameters are validated now; links are checked against the declared output types of
        the producing protocols, and against the real outputs when the draft is launched.
        """
        protocol = get_protocol(protocol_id)
        seed = random.SystemRandom().randrange(2**31) if seed is None else seed
        problems: list[str] = []
        model = self._validate_params(protocol, params, problems)
        edges: list[tuple[str, int, int, str, str | None]] = []
        for name, links in inputs.items():
            spec = protocol.inputs.get(name)
            if spec is None:
                problems.append(f"{protocol.id} has no input {name!r}")
                continue
            for pos, link in enumerate(links):
                try:
                    source = get_protocol(self.run(link.run_id).protocol)
                except ProjectError as exc:
                    problems.append(f"input {name!r}: {exc}")
                    continue
                out_name = link.output or next(iter(source.outputs), "")
                out_spec = source.outputs.get(out_name)
                if out_spec is None:
                    problems.append(f"input {name!r}: {source.id} has no output {out_name!r}")
                elif out_spec.type not in spec.types:
                    problems.append(
                        f"input {name!r} needs {' or '.join(spec.types)}, but {source.id}'s "
                        f"output {out_name!r} is a {out_spec.type}"
                    )
                else:
                    edges.append((name, pos, link.run_id, out_name, None))
        for name, spec in protocol.inputs.items():
            if not spec.optional and name not in inputs:
                problems.append(f"input {name!r} is required ({' or '.join(spec.types)})")
        if problems or model is None:
            raise ValidationError(problems)
        return self._insert_run(protocol, model, edges, label, seed)

    def prepare_launch(self, run_id: int) -> None:
        """Resolve a draft's inputs against the outputs that exist now and run its checks."""
        run = self.run(run_id)
        protocol = get_protocol(run.protocol)
        links: dict[str, list[InputLink]] = {}
        for edge in sorted(run.inputs, key=lambda e: (e.name, e.position)):
            links.setdefault(edge.name, []).append(
                InputLink(edge.source_run_id, edge.source_output)
            )
        ctx = self.validate(protocol, run.params, links, run.seed)
        with self.session(write=True) as s:
            for edge in s.scalars(select(db.RunInput).where(db.RunInput.run_id == run_id)):
                edge.content_hash = ctx.inputs[edge.name][edge.position].content_hash

    def _validate_params(
        self, protocol: type[Protocol], params: dict[str, Any], problems: list[str]
    ) -> Any:
        try:
            return protocol.Params.model_validate(params)
        except PydanticValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "parameters"
                problems.append(f"parameter {where}: {err['msg']}")
            return None

    def _insert_run(
        self,
        protocol: type[Protocol],
        params: Any,
        edges: list[tuple[str, int, int, str, str | None]],
        label: str,
        seed: int,
    ) -> int:
        with self.session(write=True) as s:
            run = db.Run(
                protocol=protocol.id,
                protocol_version=protocol.version,
                label=label,
                status=DRAFT,
                params=params.model_dump(mode="json"),
                seed=seed,
                run_dir="",
                log_path="",
                software={},
                device={},
                executor={},
            )
            s.add(run)
            s.flush()
            run.run_dir = f"runs/{run.id:06d}_{protocol.id}"
            run.log_path = f"{run.run_dir}/run.log"
            for name, pos, source_run, source_output, content_hash in edges:
                s.add(
                    db.RunInput(
                        run_id=run.id,
                        name=name,
                        position=pos,
                        source_run_id=source_run,
                        source_output=source_output,
                        content_hash=content_hash,
                    )
                )
            s.add(db.StatusChange(run_id=run.id, status=DRAFT, message="created"))
            run_id = run.id
            (self.root / run.run_dir).mkdir(parents=True, exist_ok=True)
        return run_id

    def run_context(self, run_id: int) -> RunContext:
        """The context of a recorded run, with inputs as recorded (hashes of that time)."""
        run = self.run(run_id)
        protocol = get_protocol(run.protocol)
        params = protocol.Params.model_validate(run.params)
        inputs: dict[str, list[InputRef]] = {}
        for edge in sorted(run.inputs, key=lambda e: (e.name, e.position)):
            out = self.output(edge.source_run_id, edge.source_output)
            if edge.content_hash and out.content_hash != edge.content_hash:
                raise ProjectError(
                    f"input {edge.name!r} of run {run_id} changed since the run was created "
                    f"(run {edge.source_run_id}.{edge.source_output} was re-run)"
                )
            inputs.setdefault(edge.name, []).append(
                InputRef(
                    edge.name,
                    edge.source_run_id,
                    out.name,
                    out.type,
                    out.path,
                    out.content_hash,
                    out.n_items,
                    dict(out.meta),
                )
            )
        return RunContext(
            self.root,
            run.id,
            run.run_dir,
            params,
            {k: tuple(v) for k, v in inputs.items()},
            run.seed,
        )

    # -- state changes -----------------------------------------------------------------------
    def set_status(self, run_id: int, status: str, message: str = "", **fields: Any) -> db.Run:
        """Move a run to ``status`` if the transition is allowed; record it in the history."""
        with self.session(write=True) as s:
            run = s.get(db.Run, run_id, with_for_update=True)
            if run is None:
                raise ProjectError(f"run {run_id} does not exist")
            if status != run.status and status not in TRANSITIONS.get(run.status, ()):
                raise ProjectError(f"run {run_id} is {run.status}; it cannot become {status}")
            run.status = status
            for key, value in fields.items():
                setattr(run, key, value)
            now = db.utcnow()
            if status == RUNNING:
                run.started_at = run.started_at or now
            if status in (FINISHED, FAILED, ABORTED):
                run.finished_at = now
            s.add(db.StatusChange(run_id=run_id, status=status, message=message))
            return run

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set plain fields of a run (no status change)."""
        with self.session(write=True) as s:
            run = s.get(db.Run, run_id)
            if run is None:
                raise ProjectError(f"run {run_id} does not exist")
            for key, value in fields.items():
                setattr(run, key, value)

    def reset_run(self, run_id: int) -> None:
        """Forget a run's steps and outputs (for restart); files are removed by the caller."""
        with self.session(write=True) as s:
            s.execute(delete(db.Step).where(db.Step.run_id == run_id))
            s.execute(delete(db.RunOutput).where(db.RunOutput.run_id == run_id))

    def done_steps(self, run_id: int) -> dict[str, db.Step]:
        with self.session() as s:
            q = select(db.Step).where(db.Step.run_id == run_id, db.Step.status == "done")
            return {st.key: st for st in s.scalars(q)}

    def record_step(
        self,
        run_id: int,
        key: str,
        signature: str,
        status: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        duration_s: float | None = None,
        worker: str | None = None,
    ) -> None:
        """Record a step's completion (or failure) in one transaction."""
        with self.session(write=True) as s:
            q = select(db.Step).where(db.Step.run_id == run_id, db.Step.key == key)
            step = s.scalars(q).first()
            if step is None:
                step = db.Step(run_id=run_id, key=key)
                s.add(step)
            step.signature = signature
            step.status = status
            step.result = result or {}
            step.error = error
            step.duration_s = duration_s
            step.worker = worker
            step.finished_at = db.utcnow()

    def count_steps(self, run_id: int) -> dict[str, int]:
        with self.session() as s:
            q = select(db.Step.status).where(db.Step.run_id == run_id)
            counts: dict[str, int] = {}
            for status in s.scalars(q):
                counts[status] = counts.get(status, 0) + 1
            return counts

    def register_outputs(self, run_id: int, outputs: dict[str, OutputValue]) -> None:
        """Register complete output files of a run, with their content hashes, atomically."""
        rows = []
        for name, out in outputs.items():
            files = [self.path(out.path)] + [self.path(p) for p in out.meta.get("companions", [])]
            for f in files:
                if not f.is_file():
                    raise ProjectError(f"output {name!r} of run {run_id}: {f} does not exist")
            rows.append(
                db.RunOutput(
                    run_id=run_id,
                    name=name,
                    type=out.type,
                    path=out.path,
                    content_hash=files_sha256(files),
                    n_items=out.n_items,
                    meta=out.meta,
                )
            )
        with self.session(write=True) as s:
            s.execute(delete(db.RunOutput).where(db.RunOutput.run_id == run_id))
            s.add_all(rows)

    def meta(self) -> dict[str, str]:
        with self.session() as s:
            return {m.key: m.value for m in s.scalars(select(db.ProjectMeta))}
