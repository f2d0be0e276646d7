"""Errors shared by every layer (defined in core, the bottom layer, so all may raise them)."""

from __future__ import annotations

import os


class FormatError(ValueError):
    """A file cannot be read or written in the expected format.

    The message is ``"<path>: <problem>"`` so that the user sees which file is at fault and why.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
