"""Protocol discovery through the ``cryostack.protocols`` entry-point group.

Built-in protocols are registered the same way as a plugin's (see pyproject.toml), so an external
package adds protocols by declaring entry points, without touching cryostack.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import entry_points

from cryostack.core.protocol import Protocol

ENTRY_POINT_GROUP = "cryostack.protocols"


class UnknownProtocolError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@cache
def protocol_classes() -> dict[str, type[Protocol]]:
    """All installed protocols by id. A broken plugin is reported, never silently dropped."""
    found: dict[str, type[Protocol]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Protocol)):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a cryostack Protocol")
        if cls.id != ep.name:
            raise TypeError(f"entry point {ep.name} names protocol {cls.id!r}: they must agree")
        found[cls.id] = cls
    return dict(sorted(found.items()))


def get_protocol(protocol_id: str) -> type[Protocol]:
    classes = protocol_classes()
    if protocol_id in classes:
        return classes[protocol_id]
    close = difflib.get_close_matches(protocol_id, list(classes), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownProtocolError(f"unknown protocol {protocol_id!r}.{hint}")
