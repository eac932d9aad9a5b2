"""sandboxes.world: real datasets load with the documented fields; listings are
deterministic (also across processes with different hash seeds) and inside their ranges."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envfactory.sandboxes import world

ROOT = Path(__file__).resolve().parents[2]

SPEC = {  # kind -> (count range, {field: type})
    "hotels": ((4, 8), {"hotel_id": str, "city_id": str, "name": str, "price_per_night": int,
                        "stars": int, "rating": float}),
    "restaurants": ((5, 9), {"restaurant_id": str, "city_id": str, "name": str, "cuisine": str,
                             "avg_cost": int, "rating": float, "opens_hour": int, "closes_hour": int,
                             "meal_hours": float}),
    "attractions": ((3, 6), {"attraction_id": str, "city_id": str, "name": str, "category": str,
                             "ticket_price": int, "rating": float, "duration_hours": float, "opens_hour": int,
                             "closes_hour": int}),
    "venues": ((2, 5), {"venue_id": str, "city_id": str, "name": str, "venue_type": str,
                        "capacity": int, "rental_fee": int, "rating": float}),
}
RANGES = {"price_per_night": (40, 400), "stars": (1, 5), "rating": (2.5, 5.0),
          "avg_cost": (8, 90), "ticket_price": (0, 60), "duration_hours": (0.5, 5.0),
          "capacity": (150, 20000), "rental_fee": (300, 20000), "opens_hour": (8, 18), "closes_hour": (12, 24),
          "meal_hours": (0.8, 2.5)}


@pytest.fixture(scope="module")
def sample_cities():
    cities = world.load_cities()
    return [cities[cid] for cid in sorted(cities)[::160]][:200]


def test_load_cities_fields():
    cities = world.load_cities()
    assert len(cities) > 20000
    types = {"city_id": str, "name": str, "country_code": str, "admin1": str,
             "latitude": float, "longitude": float, "population": int, "timezone": str}
    for cid, city in list(cities.items())[:500]:
        assert set(city) == set(types)
        assert all(isinstance(city[k], t) for k, t in types.items())
        assert city["city_id"] == cid
    shanghai = cities["1796236"]
    assert (shanghai["name"], shanghai["country_code"]) == ("Shanghai", "CN")
    assert shanghai["population"] > 10_000_000
    assert world.load_cities() is cities  # cached


def test_load_airports():
    airports = world.load_airports()
    assert len(airports) > 5000
    codes = [a["iata"] for a in airports]
    assert codes == sorted(codes) and len(set(codes)) == len(codes)
    assert all(len(c) == 3 for c in codes)
    pvg = next(a for a in airports if a["iata"] == "PVG")
    assert pvg["country_code"] == "CN" and pvg["icao"] == "ZSPD"
    assert set(pvg) == {"iata", "icao", "name", "city", "country_code", "latitude", "longitude"}


def test_haversine_known_distances():
    assert world.haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343.5, abs=2)
    assert world.haversine_km(31.2222, 121.4581, 39.9075, 116.3972) == pytest.approx(1067, abs=10)
    assert world.haversine_km(10, 20, 10, 20) == 0.0


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown listing kind"):
        world.listings("castles", world.load_cities()["1796236"])


def test_listings_deterministic_in_process(sample_cities):
    for city in sample_cities[:50]:
        for kind in world.LISTING_KINDS:
            assert world.listings(kind, city) == world.listings(kind, dict(city))


def test_listings_identical_across_processes():
    # Different PYTHONHASHSEEDs would expose any use of hash() or set iteration order.
    code = ("import json,sys; from sandboxes import world; c=world.load_cities(); "
            "json.dump([world.listings(k, c[i]) for i in ('1796236','2643743','1000006') "
            "for k in world.LISTING_KINDS], sys.stdout)")
    outs = []
    for seed in ("1", "987"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1]
    cities = world.load_cities()
    here = [world.listings(k, cities[i]) for i in ("1796236", "2643743", "1000006")
            for k in world.LISTING_KINDS]
    assert json.loads(json.dumps(here)) == outs[0]


def test_listings_types_ranges_counts(sample_cities):
    for city in sample_cities:
        for kind, ((lo, hi), types) in SPEC.items():
            records = world.listings(kind, city)
            assert lo <= len(records) <= hi, (kind, city["city_id"], len(records))
            id_field = next(iter(types))
            ids = [r[id_field] for r in records]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            assert len({r["name"] for r in records}) == len(records)
            for r in records:
                assert list(r) == list(types)
                for field, t in types.items():
                    assert type(r[field]) is t, (kind, field, r)
                for field, (fmin, fmax) in RANGES.items():
                    if field in r:
                        assert fmin <= r[field] <= fmax, (kind, field, r)
                assert r["city_id"] == city["city_id"]
                assert r[id_field].startswith(kind[0].upper() + city["city_id"] + "-")
                if "rating" in r:
                    assert round(r["rating"], 1) == r["rating"]


def test_listings_vocabularies_and_spread(sample_cities):
    cuisines_per_city, free, tickets, prices = [], 0, 0, set()
    for city in sample_cities:
        rest = world.listings("restaurants", city)
        assert {r["cuisine"] for r in rest} <= set(world.CUISINES)
        cuisines_per_city.append(len({r["cuisine"] for r in rest}))
        hotels = world.listings("hotels", city)
        # distinct nightly prices inside a city, so "cheapest hotel" has one answer
        assert len({h["price_per_night"] for h in hotels}) == len(hotels)
        prices.update(h["price_per_night"] for h in hotels)
        attractions = world.listings("attractions", city)
        assert {a["category"] for a in attractions} <= set(world.ATTRACTION_CATEGORIES)
        free += sum(a["ticket_price"] == 0 for a in attractions)
        tickets += len(attractions)
        assert {v["venue_type"] for v in world.listings("venues", city)} <= set(world.VENUE_TYPES)
    assert len(world.CUISINES) == 12
    assert sum(cuisines_per_city) / len(cuisines_per_city) >= 4
    assert 0.15 <= free / tickets <= 0.35
    assert len(prices) > 100


def test_bigger_cities_cost_more():
    cities = world.load_cities()
    by_pop = sorted(cities.values(), key=lambda c: c["population"])
    small, big = by_pop[1000:1100], by_pop[-100:]

    def mean(group, kind, field):
        values = [r[field] for c in group for r in world.listings(kind, c)]
        return sum(values) / len(values)

    assert mean(big, "hotels", "price_per_night") > 1.3 * mean(small, "hotels", "price_per_night")
    assert mean(big, "venues", "capacity") > 2 * mean(small, "venues", "capacity")
    stars = {s: [] for s in range(1, 6)}
    for c in big:
        for h in world.listings("hotels", c):
            stars[h["stars"]].append(h["price_per_night"])
    assert sum(stars[5]) / len(stars[5]) > 2 * sum(stars[1]) / len(stars[1])
