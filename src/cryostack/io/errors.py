"""Errors and warnings raised by the file-format readers and writers of :mod:`cryostack.io`."""

from __future__ import annotations

from cryostack.core.errors import FormatError

__all__ = ["FormatError", "FormatWarning"]


class FormatWarning(UserWarning):
    """A file was read, but something in it is dubious (e.g. a legacy MRC header)."""
