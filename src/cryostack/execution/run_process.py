"""Entry point of a run's own process: ``python -m cryostack.execution.run_process ROOT RUN_ID``."""

from __future__ import annotations

import argparse

from cryostack.core.project import FINISHED, Project
from cryostack.execution.local import LocalExecutor
from cryostack.execution.runner import install_abort_handler, run_in_this_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("project")
    parser.add_argument("run_id", type=int)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    install_abort_handler()
    project = Project.open(args.project)
    status = run_in_this_process(project, args.run_id, LocalExecutor(workers=args.workers))
    return 0 if status == FINISHED else 1


if __name__ == "__main__":
    raise SystemExit(main())
