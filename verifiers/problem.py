"""The solver's and the verifier's view of one environment: candidate entities per slot.

A plan has `units` units (days, nights, ...); each unit picks one entity per slot. The first
slot is the anchor (e.g. the city); every other slot is linked to it by a column (a hotel's
`city_id` must be the unit's city). Numbers on DOUBLE columns are compared at 0.1
resolution (`scaled`), in the solver and in generated verifiers alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SlotView", "Problem", "load_problem", "scaled", "Plan"]

Plan = tuple[tuple[str, ...], ...]  # units x slots of entity ids


def scaled(v) -> int:
    """Exact integer form of a number: booleans as 0/1, DOUBLE at 0.1 resolution."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    return round(float(v) * 10)


@dataclass(frozen=True)
class SlotView:
    name: str
    table: str
    key: str
    link: str | None
    cost: str | None
    columns: dict[str, str]  # column -> DuckDB type


@dataclass
class Problem:
    unit: str                       # "day"
    units: int
    slots: list[SlotView]
    rows: dict[str, dict[str, dict]]  # slot -> id -> row
    origin: dict | None             # the origin's anchor row (not a candidate)
    km: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def anchor(self) -> SlotView:
        return self.slots[0]

    @property
    def key(self) -> str:
        return self.unit + "s"

    def slot(self, name: str) -> SlotView:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def cost_slots(self) -> list[SlotView]:
        return [s for s in self.slots if s.cost]

    def cost(self, slot: str, eid: str) -> int:
        s = self.slot(slot)
        return scaled(self.rows[slot][eid][s.cost]) if s.cost else 0

    def plan_dict(self, plan: Plan) -> dict:
        return {self.key: [{s.name: ids[i] for i, s in enumerate(self.slots)} for ids in plan]}

    def plan_rows(self, plan: Plan) -> list[dict[str, dict]]:
        return [{s.name: dict(self.rows[s.name][ids[i]], _id=ids[i]) for i, s in enumerate(self.slots)}
                for ids in plan]

    def ctx(self) -> dict:
        """The context a check function sees: origin id and the distances it may need."""
        return {"origin": self.origin[self.anchor.key] if self.origin else None, "km": self.km}


def load_problem(con, seed, region) -> Problem:
    """Read the candidates of every slot for a region from the sandbox connection."""
    plan = seed.plan
    slots = [SlotView(s.name, s.table, seed.table_key(s.table), s.link, s.cost, seed.table_columns(s.table))
             for s in plan.slots]
    anchor_ids = list(region.city_ids)
    rows: dict[str, dict[str, dict]] = {}
    for s in slots:
        cols = list(s.columns)
        sel = ", ".join(f'"{c}"' for c in cols)
        if s.link is None:
            where, arg = f'"{s.key}" IN (SELECT unnest(?))', anchor_ids
        else:
            where, arg = f'"{s.link}" IN (SELECT unnest(?))', anchor_ids
        cur = con.execute(f'SELECT {sel} FROM "{s.table}" WHERE {where} ORDER BY "{s.key}"', [arg])
        rows[s.name] = {str(r[cols.index(s.key)]): dict(zip(cols, r)) for r in cur.fetchall()}
    a = slots[0]
    origin = None
    if plan.origin:
        cols = list(a.columns)
        r = con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM "{a.table}" WHERE "{a.key}" = ?',
                        [region.origin_id]).fetchone()
        origin = dict(zip(cols, r))
    km = {}
    has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'distances'").fetchone()[0]
    if has:  # seeds whose anchor table has no coordinates have no distances
        km = {(f, t): d for f, t, d in con.execute("SELECT from_id, to_id, km FROM distances").fetchall()}
    return Problem(plan.unit, plan.units, slots, rows, origin, km)
