"""schedule: each unit's visits fit its hours, back to back, within opening hours.

`{slots, duration, opens, closes, start, end}`: every unit (a day) visits the entities of
`slots` in that order, the first at `start` (an hour of the day, e.g. 9.0). A visit begins
when the previous one ends or when the place opens (`opens[slot]`, a column), whichever is
later, lasts `duration[slot]` hours, and must end by the place's closing hour
(`closes[slot]`) and by `end`. So visits never overlap and opening hours are respected.
Hours compare at 0.1 h resolution, whatever the columns' types.
"""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, register

COLS = {"type": "object", "additionalProperties": {"type": "string"}}
SCHEMA = {"required": ["slots", "duration", "start", "end"], "properties": {
    "slots": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    "duration": COLS, "opens": COLS, "closes": COLS,
    "start": {"type": "number", "minimum": 0, "maximum": 24}, "end": {"type": "number", "minimum": 0, "maximum": 48}}}


def check(units, params, ctx):
    def tenth(v):  # hours at 0.1 h, for INTEGER and DOUBLE columns alike
        return round(float(v) * 10)

    start, end = tenth(params["start"]), tenth(params["end"])
    opens, closes = params.get("opens") or {}, params.get("closes") or {}
    last = start
    for i, unit in enumerate(units):
        t = start
        for slot in params["slots"]:
            row = unit[slot]
            cols = [params["duration"][slot]] + [c for c in (opens.get(slot), closes.get(slot)) if c]
            if any(row[c] is None for c in cols):
                return False, f"unit {i + 1}: {slot} {row['_id']} has no {' or '.join(cols)}"
            begin = max(t, tenth(row[opens[slot]])) if slot in opens else t
            t = begin + tenth(row[params["duration"][slot]])
            limit = min(end, tenth(row[closes[slot]])) if slot in closes else end
            if t > limit:
                why = "closes" if slot in closes and limit < end else "the day ends"
                return False, (f"unit {i + 1}: {slot} {row['_id']} runs from {begin / 10:g} h to {t / 10:g} h, "
                               f"but {why} at {limit / 10:g} h")
        last = max(last, t)
    return True, f"every unit's visits fit between {start / 10:g} h and {end / 10:g} h (latest end {last / 10:g} h)"


def _tenth_of(p, slot, col):
    return lambda e: round(float(p.rows[slot][e][col] or 0) * 10)


def encode(model, x, c, p):
    prm = c.params
    opens, closes = prm.get("opens") or {}, prm.get("closes") or {}
    start, end = round(prm["start"] * 10), round(prm["end"] * 10)
    for u in range(p.units):
        t = start
        for k, slot in enumerate(prm["slots"]):
            begin = t
            if slot in opens:
                # the visit begins when the place opens or the previous visit ends: fixed by
                # the plan (a max equality), so each plan is one solution when enumerating
                begin = model.new_int_var(0, 480, f"begin_{c.name}_{u}_{k}")
                model.add_max_equality(begin, [t, x.value(u, slot, _tenth_of(p, slot, opens[slot]))])
            finish = begin + x.value(u, slot, _tenth_of(p, slot, prm["duration"][slot]))
            model.add(finish <= end)
            if slot in closes:
                model.add(finish <= x.value(u, slot, _tenth_of(p, slot, closes[slot])))
            t = finish


def describe(c, p):
    prm = c.params
    order = ", then ".join(f"the {s}" for s in prm["slots"])
    hours = " (not before it opens, and ending by its closing hour)" if prm.get("opens") or prm.get("closes") else ""
    return (f"Each {p.unit}, visit {order}, one after the other from {prm['start']:g}:00, each taking its listed "
            f"duration{hours}; every {p.unit}'s visits must end by {prm['end']:g}:00.")


def needs(c, p):
    prm = c.params
    out = []
    for field in ("duration", "opens", "closes"):
        out += [Need(p.slot(s).table, col) for s, col in (prm.get(field) or {}).items()]
    return out


def name_of() -> str:
    return "schedule"


def propose(item, p, current, reference, rng, opts):
    """From the seed's schedule columns (opts["schedule"]), an end hour just after the
    reference plan's latest finish, then earlier ones: each binds on some plans."""
    spec = opts.get("schedule")
    if not spec or reference is None:
        return []
    old = next((k for k in current if k.kind == "schedule"), None)
    base = dict(spec, end=24.0) if old is None else dict(old.params)
    finishes = []
    for unit in p.plan_rows(reference):
        ok, _ = check([unit], dict(base, end=48.0), {})
        if not ok:
            return []
        finishes.append(_finish(unit, base))
    latest = max(finishes)
    out = []
    for slack in (1.0, 0.5, 0.0):
        end = round(latest + slack, 1)
        if end < base["end"]:
            out.append(Constraint("schedule", name_of(), dict(base, end=end)))
    return out


def _finish(unit, prm) -> float:
    t = prm["start"]
    for slot in prm["slots"]:
        row = unit[slot]
        if slot in (prm.get("opens") or {}):
            t = max(t, float(row[prm["opens"][slot]]))
        t += float(row[prm["duration"][slot]])
    return t


def local(u, unit, params):
    return check([unit], params, {})[0]


def refine(params, p):
    """Every visited slot has a duration; opening and closing hours only for visited slots."""
    missing = [s for s in params["slots"] if s not in params["duration"]]
    if missing:
        return f"duration: no column for {', '.join(missing)}"
    for field in ("duration", "opens", "closes"):
        stray = sorted(set(params.get(field) or {}) - set(params["slots"]))
        if stray:
            return f"{field}: {', '.join(stray)} is not one of the visited slots"
    if params["end"] <= params["start"]:
        return "end must be after start"
    return None


register("schedule", check=check, encode=encode, describe=describe, needs=needs, propose=propose, local=local,
         schema=SCHEMA, refine=refine)
