"""A plugin protocol for the tests: discovered through its entry point, like any plugin.

``test-squares`` runs one step per item; each step draws numbers from its step seed, squares
them, waits ``sleep_s`` (so a test can kill the run midway) and writes them; ``finish`` gathers
the items into one ``.npy`` table. Its outputs depend only on params and seed, so re-runs and
continued runs must reproduce them bit for bit.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cryostack.core.datamodel import FileKind, SetKind
from cryostack.core.protocol import (
    InputSpec,
    OutputSpec,
    OutputValue,
    Params,
    Protocol,
    RunContext,
    StepContext,
    StepSpec,
    atomic_path,
    param,
)


class SquaresParams(Params):
    n_items: int = param(6, help="number of items", ge=1, le=1000)
    sleep_s: float = param(0.0, help="seconds each step waits", unit="s", ge=0)
    fail_item: int = param(-1, help="item whose step raises (-1: none)")
    scale: float = param(1.0, help="multiplier", group="Advanced", gt=0)


class SquaresProtocol(Protocol):
    id = "test-squares"
    name = "Squares (test plugin)"
    category = "Testing"
    help = "Squares seeded random numbers item by item."
    citations = ("cryostack test suite",)
    Params = SquaresParams
    outputs = {"table": OutputSpec(FileKind.TABLE, "squared values, one row per item")}

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        assert isinstance(ctx.params, SquaresParams)
        return [
            StepSpec(key=f"item-{i:03d}", item=f"item {i}", payload={"i": i})
            for i in range(ctx.params.n_items)
        ]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        assert isinstance(ctx.params, SquaresParams)
        i = ctx.step.payload["i"]
        if i == ctx.params.fail_item:
            raise RuntimeError(f"item {i} is broken on purpose")
        values = np.random.default_rng(ctx.step_seed).normal(size=8) ** 2 * ctx.params.scale
        time.sleep(ctx.params.sleep_s)
        np.save(ctx.work_dir / "values.npy", values)
        (ctx.work_dir / "pid").write_text(str(__import__("os").getpid()))
        return {"sum": float(values.sum())}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        rows = [np.load(ctx.step_dir(key) / "values.npy") for key in sorted(results)]
        target = ctx.output_path("table.npy")
        with atomic_path(target) as tmp:
            np.save(tmp, np.stack(rows))
        return {"table": OutputValue(FileKind.TABLE, ctx.relative(target), len(rows))}


class SumParams(Params):
    offset: float = param(0.0, help="added to every sum")


class SumProtocol(Protocol):
    """Consumes a table (provenance links and workflows are tested with it)."""

    id = "test-sum"
    name = "Sum rows (test plugin)"
    category = "Testing"
    help = "Sums each row of a table."
    Params = SumParams
    inputs = {"table": InputSpec((FileKind.TABLE,), "a table of numbers")}
    outputs = {"sums": OutputSpec(FileKind.TABLE, "row sums")}

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        return [StepSpec(key="sum")]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        assert isinstance(ctx.params, SumParams)
        table = np.load(ctx.path(ctx.input("table").path))
        np.save(ctx.work_dir / "sums.npy", table.sum(axis=1) + ctx.params.offset)
        return {}

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        target = ctx.output_path("sums.npy")
        with atomic_path(target) as tmp:
            np.save(tmp, np.load(ctx.step_dir("sum") / "sums.npy"))
        return {"sums": OutputValue(FileKind.TABLE, ctx.relative(target), 1)}


class TakesMicrographsProtocol(Protocol):
    """Declares a micrograph input (input type checks are tested with it)."""

    id = "test-takes-micrographs"
    name = "Takes micrographs (test plugin)"
    category = "Testing"
    help = "Accepts only a set of micrographs."
    Params = Params
    inputs = {"micrographs": InputSpec((SetKind.MICROGRAPHS,), "micrographs")}
    outputs = {"micrographs": OutputSpec(SetKind.MICROGRAPHS)}
