"""The solver's and the verifier's view of one environment: candidate entities per slot.

A plan has `units` units (days, legs, picks, ...); each unit picks one entity per slot.
Slots are tied together by links: a slot's column equals another slot's column in the same
unit (a hotel's `city_id` is the day's city), or in the previous unit (a flight departs
where the previous one landed; the first from the origin). A selection's units are a set:
distinct first-slot entities in any order. Numbers on DOUBLE columns are compared at 0.1
resolution (`scaled`), in the solver and in generated verifiers alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SlotView", "LinkView", "Problem", "load_problem", "load_pairs", "slot_views", "scaled", "Plan"]

Plan = tuple[tuple[str, ...], ...]  # units x slots of entity ids


def scaled(v) -> int:
    """Exact integer form of a number: booleans as 0/1, DOUBLE at 0.1 resolution."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    return round(float(v) * 10)


@dataclass(frozen=True)
class LinkView:
    column: str      # this slot's column ...
    slot: str        # ... equals this slot's
    target: str      # column,
    previous: bool   # of the previous unit (for the first unit: the origin's id) or of the same unit
    via: tuple[str, str, str] | None = None  # (table, this, that): (column, target) is a (this, that) row

    def holds(self, p: "Problem", mine, theirs) -> bool:
        """This link between this slot's column value and the linked value."""
        if self.via is None:
            return str(mine) == str(theirs)
        return (str(mine), str(theirs)) in p.pairs[self.via]

    def allowed(self, p: "Problem", theirs) -> set[str] | None:
        """The column values this link allows next to `theirs` (None: only `theirs` itself)."""
        if self.via is None:
            return None
        return p.partners(self.via).get(str(theirs), set())


@dataclass(frozen=True)
class SlotView:
    name: str
    table: str
    key: str
    links: tuple[LinkView, ...]
    cost: str | None
    columns: dict[str, str]  # column -> DuckDB type

    @property
    def same_unit_links(self) -> tuple[LinkView, ...]:
        return tuple(lk for lk in self.links if not lk.previous)

    @property
    def previous_links(self) -> tuple[LinkView, ...]:
        return tuple(lk for lk in self.links if lk.previous)


@dataclass
class Problem:
    unit: str                       # "day"
    units: int
    slots: list[SlotView]
    rows: dict[str, dict[str, dict]]  # slot -> id -> row
    origin_id: str | None = None    # the partition's center, where a plan starts (never a stop)
    km: dict[tuple[str, str], float] = field(default_factory=dict)
    unordered: bool = False         # a selection: units are a set of distinct first-slot entities
    origin_table: str | None = None  # the table the origin is a row of (no slot over it may pick it)
    pairs: dict[tuple[str, str, str], frozenset[tuple[str, str]]] = field(default_factory=dict)  # via -> (this, that)

    def partners(self, via: tuple[str, str, str]) -> dict[str, set[str]]:
        """A relation's pairs indexed by their `that` value: which `this` values each allows."""
        cache = self.__dict__.setdefault("_partners", {})
        if via not in cache:
            out: dict[str, set[str]] = {}
            for this, that in self.pairs[via]:
                out.setdefault(that, set()).add(this)
            cache[via] = out
        return cache[via]

    @property
    def anchor(self) -> SlotView:
        return self.slots[0]

    @property
    def key(self) -> str:
        from envfactory.verifiers.constraints.base import plural

        return plural(self.unit)

    @property
    def chained(self) -> bool:
        return any(s.previous_links for s in self.slots)

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
        return {"origin": self.origin_id, "km": self.km}


def slot_views(seed) -> list[SlotView]:
    out = []
    for s in seed.plan.slots:
        links = tuple(LinkView(lk.column, *lk.target, lk.previous,
                               (lk.via.table, lk.via.this, lk.via.that) if lk.via else None)
                      for lk in seed.slot_links(s))
        out.append(SlotView(s.name, s.table, seed.table_key(s.table), links, s.cost, seed.table_columns(s.table)))
    return out


def _meta(con, key: str) -> str | None:
    got = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return got[0] if got else None


def load_problem(con, seed) -> Problem:
    """Every candidate of every slot from the sandbox connection: the sandbox holds only the
    environment's partition, so a slot's candidates are its table's rows, less the origin."""
    slots = slot_views(seed)
    part = seed.partition
    origin_id = _meta(con, "origin_id") if seed.plan.origin and part.center else None
    rows: dict[str, dict[str, dict]] = {}
    for s in slots:
        cols = list(s.columns)
        sel = ", ".join(f'"{c}"' for c in cols)
        cur = con.execute(f'SELECT {sel} FROM "{s.table}" ORDER BY "{s.key}"')
        got = {str(r[cols.index(s.key)]): dict(zip(cols, r)) for r in cur.fetchall()}
        if origin_id is not None and s.table == part.table:
            got.pop(origin_id, None)
        rows[s.name] = got
    km = {}
    has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'distances'").fetchone()[0]
    if has:  # seeds whose partition table has no coordinates have no distances
        km = {(f, t): d for f, t, d in con.execute("SELECT from_id, to_id, km FROM distances").fetchall()}
    return Problem(seed.plan.unit, seed.plan.units, slots, rows, origin_id, km, seed.plan.shape == "selection",
                   part.table if origin_id is not None else None, load_pairs(con, slots))


def load_pairs(con, slots: list[SlotView]) -> dict[tuple[str, str, str], frozenset[tuple[str, str]]]:
    """Every relation a link goes through, as (this, that) pairs of text values."""
    out = {}
    for lk in (lk for s in slots for lk in s.links if lk.via):
        table, this, that = lk.via
        got = con.execute(f'SELECT DISTINCT CAST("{this}" AS VARCHAR), CAST("{that}" AS VARCHAR) FROM "{table}" '
                          f'WHERE "{this}" IS NOT NULL AND "{that}" IS NOT NULL').fetchall()
        out[lk.via] = frozenset(got)
    return out
