"""What a protocol is: declared parameters, typed inputs and outputs, and a plan of steps.

A protocol is a stateless class. Its parameters are a pydantic model (the single source for CLI
options, web forms, validation and workflow export); its inputs name the output types they accept;
``plan`` lists the steps of a run (one per item where items are independent, so they run in
parallel and checkpoint one by one); ``run_step`` does one step in a worker process, writing files
only under ``ctx.work_dir``; ``finish`` gathers the step results into the run's outputs.

Steps run in worker processes that may be on another machine: everything a step receives
(:class:`StepContext`) is picklable and refers to files by paths relative to the project.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from cryostack.core.datamodel import ItemSet
from cryostack.core.files import atomic_path as atomic_path  # re-exported for protocols


class Params(BaseModel):
    """Base class of protocol parameter models: unknown keys are an error, values are checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def param(
    default: Any = ...,
    *,
    help: str,
    unit: str | None = None,
    group: str = "General",
    **constraints: Any,
) -> Any:
    """A parameter field with its help text, unit and form group recorded in the JSON schema."""
    extra: dict[str, Any] = {"group": group}
    if unit:
        extra["unit"] = unit
    return Field(default, description=help, json_schema_extra=extra, **constraints)


@dataclass(frozen=True)
class InputSpec:
    """A typed input: accepted output types, and columns a set must carry."""

    types: tuple[str, ...]
    help: str = ""
    optional: bool = False
    multiple: bool = False
    required_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputSpec:
    """A typed output of a protocol."""

    type: str
    help: str = ""


@dataclass(frozen=True)
class InputRef:
    """An input resolved to a registered output of an earlier run (paths relative to project)."""

    name: str
    source_run_id: int
    source_output: str
    type: str
    path: str
    content_hash: str
    n_items: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepSpec:
    """One planned step. ``payload`` must be JSON-serialisable; it is part of the signature."""

    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    item: str | None = None
    threads: int = 1
    gpu: bool = False
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputValue:
    """An output produced by ``finish``: a complete file (path relative to the project)."""

    type: str
    path: str
    n_items: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunContext:
    """What plan/finish (in the run's coordinator) and steps (in workers) know about the run."""

    project_root: Path
    run_id: int
    run_dir: str
    params: Params
    inputs: dict[str, tuple[InputRef, ...]]
    seed: int

    def path(self, relative: str | Path) -> Path:
        """Absolute path of a project-relative path (absolute paths pass through)."""
        p = Path(relative)
        return p if p.is_absolute() else self.project_root / p

    def relative(self, path: str | Path) -> str:
        """Project-relative form of a path inside the project, else the absolute path."""
        p = Path(path).absolute()
        try:
            return p.relative_to(self.project_root.absolute()).as_posix()
        except ValueError:
            return str(p)

    @property
    def run_path(self) -> Path:
        return self.path(self.run_dir)

    def step_dir(self, key: str) -> Path:
        """Folder holding the files of a completed step."""
        return self.run_path / "steps" / safe_name(key)

    def output_path(self, filename: str) -> Path:
        """Where a run writes a final output file (write it atomically: see ``atomic_path``)."""
        folder = self.run_path / "outputs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / filename

    def input(self, name: str) -> InputRef:
        """The single input bound to ``name`` (raises KeyError when absent)."""
        refs = self.inputs.get(name, ())
        if not refs:
            raise KeyError(f"input {name!r} is not bound")
        return refs[0]

    def has_input(self, name: str) -> bool:
        return bool(self.inputs.get(name))

    def read_input_set(self, name: str) -> ItemSet:
        from cryostack.core.sets import read_set

        return read_set(self.path(self.input(name).path))

    def log(self, message: str) -> None:
        """Append a line to the run's log (safe from several processes: one O_APPEND write)."""
        line = f"{message.rstrip()}\n".encode()
        fd = os.open(self.run_path / "run.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class StepContext(RunContext):
    """A run context plus the step being executed and where it writes."""

    step: StepSpec = StepSpec(key="")
    work_dir: Path = Path()
    device: str = "cpu"
    threads: int = 1
    step_seed: int = 0

    def log(self, message: str) -> None:
        super().log(f"[{self.step.key}] {message}")


def step_context(run: RunContext, step: StepSpec, **kwargs: Any) -> StepContext:
    return StepContext(**{**run.__dict__, "step": step, **kwargs})


class Protocol:
    """Base class of all protocols. Subclasses set the class variables and implement the hooks."""

    id: ClassVar[str]
    name: ClassVar[str]
    category: ClassVar[str]
    help: ClassVar[str]
    citations: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]]
    inputs: ClassVar[dict[str, InputSpec]] = {}
    outputs: ClassVar[dict[str, OutputSpec]] = {}
    deterministic: ClassVar[bool] = True
    external_programs: ClassVar[tuple[str, ...]] = ()

    def check(self, ctx: RunContext) -> list[str]:
        """Extra validation before launch (files exist, headers agree...): user-facing messages."""
        return []

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        raise NotImplementedError

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        raise NotImplementedError


def safe_name(key: str) -> str:
    """A step key as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def step_signature(protocol: type[Protocol], ctx: RunContext, step: StepSpec) -> str:
    """Hash of everything a step's result depends on: protocol version, params, inputs, seed."""
    body = {
        "protocol": protocol.id,
        "version": protocol.version,
        "key": step.key,
        "payload": step.payload,
        "params": ctx.params.model_dump(mode="json"),
        "inputs": {n: [r.content_hash for r in refs] for n, refs in ctx.inputs.items()},
        "seed": ctx.seed,
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()
