"""Ladder entries: the seed's surface syntax for constraints, `kind[:slot[.column]] [op [value]]`.

Each kind reads an entry in its `propose` (`verifiers.constraints.base`); the seed checker
reads it against the kind's `target` and `schema`.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict

__all__ = ["OPS", "PoolItem", "parse_pool_item"]

OPS = (">=", "<=", ">", "<", "==", "!=", "in", "not in")


class PoolItem(BaseModel):
    """One ladder entry, `kind[:slot[.column]] [op [value]]`, e.g. `aggregate:restaurant.rating`,
    `attribute:hotel.stars >= 4`, `attribute:film.genre in ["Drama", "Comedy"]`, or
    `sum:flight.distance_km <=` (the ladder chooses the value). A stated value is JSON."""

    model_config = ConfigDict(frozen=True)
    kind: str
    slot: str | None = None
    column: str | None = None
    op: str | None = None
    value: object = None
    has_value: bool = False

    def __str__(self) -> str:
        s = self.kind
        if self.slot:
            s += ":" + self.slot + (("." + self.column) if self.column else "")
        if self.op:
            s += " " + self.op + ((" " + json.dumps(self.value)) if self.has_value else "")
        return s


def parse_pool_item(text: str) -> PoolItem:
    m = re.fullmatch(r"\s*([a-z_]+)(?::([a-z_][a-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?)?"
                     r"(?:\s+(>=|<=|==|!=|>|<|not in|in)(?:\s+(.+?))?)?\s*", text)
    if not m:
        raise ValueError(f"bad ladder entry {text!r}: expected kind[:slot[.column]] [op [value]]")
    value, has = None, m[5] is not None
    if has:
        try:
            value = json.loads(m[5])
        except ValueError:
            raise ValueError(f"bad ladder entry {text!r}: the value {m[5]!r} is not JSON "
                             "(strings in double quotes, lists in [ ])") from None
    return PoolItem(kind=m[1], slot=m[2], column=m[3], op=m[4], value=value, has_value=has)
