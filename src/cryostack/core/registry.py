"""Protocol discovery through the ``cryostack.protocols`` entry-point group.

Built-in protocols are registered the same way as a plugin's (see pyproject.toml), so an external
package adds protocols by declaring entry points, without touching cryostack.
"""

from __future__ import annotations

import difflib
import warnings
from functools import cache
from importlib.metadata import entry_points

from cryostack.core.protocol import Protocol

ENTRY_POINT_GROUP = "cryostack.protocols"


class UnknownProtocolError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@cache
def _discover() -> tuple[dict[str, type[Protocol]], dict[str, str]]:
    found: dict[str, type[Protocol]] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            broken[ep.name] = f"{ep.value} failed to load: {type(exc).__name__}: {exc}"
            continue
        if not (isinstance(cls, type) and issubclass(cls, Protocol)):
            broken[ep.name] = f"{ep.value} is not a cryostack Protocol"
        elif cls.id != ep.name:
            broken[ep.name] = f"{ep.value} declares id {cls.id!r}; the entry point says {ep.name!r}"
        else:
            found[cls.id] = cls
    for name, problem in broken.items():
        warnings.warn(f"protocol plugin {name}: {problem}", RuntimeWarning, stacklevel=3)
    return dict(sorted(found.items())), broken


def protocol_classes() -> dict[str, type[Protocol]]:
    """All installed protocols by id (broken plugins are left out and reported as warnings)."""
    return _discover()[0]


def broken_plugins() -> dict[str, str]:
    """Entry points that failed to load, with the reason."""
    return _discover()[1]


def reload_protocols() -> None:
    """Forget discovered protocols (after installing a plugin in a running process)."""
    _discover.cache_clear()


def get_protocol(protocol_id: str) -> type[Protocol]:
    classes = protocol_classes()
    if protocol_id in classes:
        return classes[protocol_id]
    if protocol_id in broken_plugins():
        raise UnknownProtocolError(
            f"protocol {protocol_id!r} is broken: {broken_plugins()[protocol_id]}"
        )
    close = difflib.get_close_matches(protocol_id, list(classes), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownProtocolError(f"unknown protocol {protocol_id!r}.{hint}")
