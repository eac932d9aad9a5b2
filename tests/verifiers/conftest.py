"""A small synthetic environment (real DuckDB file) shared by the constraint tests."""

from __future__ import annotations

import random

import duckdb
import pytest

from envfactory.verifiers.problem import LinkView, Problem, SlotView

CUISINES = ["thai", "italian", "sichuan", "seafood"]


def _world(rng: random.Random):
    cities = {}
    for i in range(5):
        cid = f"C{i}"
        cities[cid] = {"city_id": cid, "name": f"City {i}", "latitude": 30 + rng.random() * 2,
                       "longitude": 120 + rng.random() * 2, "has_airport": i % 2 == 0}
    hotels, rests, attrs = {}, {}, {}
    for cid in list(cities)[1:]:
        for j in range(2):
            hid = f"H{cid}{j}"
            hotels[hid] = {"hotel_id": hid, "city_id": cid, "name": hid, "price_per_night": rng.randint(40, 120),
                           "stars": rng.randint(2, 5), "rating": round(rng.uniform(3.0, 5.0), 1)}
            rid = f"R{cid}{j}"
            rests[rid] = {"restaurant_id": rid, "city_id": cid, "name": rid, "cuisine": rng.choice(CUISINES),
                          "avg_cost": rng.randint(10, 60), "rating": round(rng.uniform(3.0, 5.0), 1),
                          "opens_hour": rng.choice([11, 12, 17, 18]), "closes_hour": rng.choice([21, 22, 23]),
                          "meal_hours": round(rng.uniform(0.8, 2.5), 1)}
        aid = f"A{cid}"
        attrs[aid] = {"attraction_id": aid, "city_id": cid, "name": aid, "ticket_price": rng.randint(0, 30),
                      "rating": round(rng.uniform(3.0, 5.0), 1), "duration_hours": round(rng.uniform(1.0, 5.0), 1),
                      "opens_hour": rng.choice([8, 9, 10, 13]), "closes_hour": rng.choice([15, 17, 19])}
    return cities, hotels, rests, attrs


TYPES = {
    "cities": {"city_id": "VARCHAR", "name": "VARCHAR", "latitude": "DOUBLE", "longitude": "DOUBLE", "has_airport": "BOOLEAN"},
    "hotels": {"hotel_id": "VARCHAR", "city_id": "VARCHAR", "name": "VARCHAR", "price_per_night": "INTEGER",
               "stars": "INTEGER", "rating": "DOUBLE"},
    "restaurants": {"restaurant_id": "VARCHAR", "city_id": "VARCHAR", "name": "VARCHAR", "cuisine": "VARCHAR",
                    "avg_cost": "INTEGER", "rating": "DOUBLE", "opens_hour": "INTEGER", "closes_hour": "INTEGER",
                    "meal_hours": "DOUBLE"},
    "attractions": {"attraction_id": "VARCHAR", "city_id": "VARCHAR", "name": "VARCHAR", "ticket_price": "INTEGER",
                    "rating": "DOUBLE", "duration_hours": "DOUBLE", "opens_hour": "INTEGER", "closes_hour": "INTEGER"},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(problem, db_path) for a 3-unit trip over 4 candidate cities and an origin."""
    from envfactory.sandboxes.world import haversine_km

    rng = random.Random(1234)
    cities, hotels, rests, attrs = _world(rng)
    db = tmp_path_factory.mktemp("env") / "sandbox.duckdb"
    con = duckdb.connect(str(db))
    for table, rows in (("cities", cities), ("hotels", hotels), ("restaurants", rests), ("attractions", attrs)):
        cols = TYPES[table]
        con.execute(f"CREATE TABLE {table} ({', '.join(f'{c} {t}' for c, t in cols.items())})")
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})",
                        [tuple(r[c] for c in cols) for r in rows.values()])
    km = {(a, b): round(haversine_km(cities[a]["latitude"], cities[a]["longitude"],
                                     cities[b]["latitude"], cities[b]["longitude"]), 1)
          for a in cities for b in cities if a != b}
    con.execute("CREATE TABLE distances (from_id VARCHAR, to_id VARCHAR, km DOUBLE)")
    con.executemany("INSERT INTO distances VALUES (?, ?, ?)", [(a, b, d) for (a, b), d in km.items()])
    con.close()
    in_city = (LinkView("city_id", "city", "city_id", False),)
    slots = [
        SlotView("city", "cities", "city_id", (), None, TYPES["cities"]),
        SlotView("hotel", "hotels", "hotel_id", in_city, "price_per_night", TYPES["hotels"]),
        SlotView("restaurant", "restaurants", "restaurant_id", in_city, "avg_cost", TYPES["restaurants"]),
        SlotView("attraction", "attractions", "attraction_id", in_city, "ticket_price", TYPES["attractions"]),
    ]
    candidates = {k: v for k, v in cities.items() if k != "C0"}
    p = Problem("day", 3, slots, {"city": candidates, "hotel": hotels, "restaurant": rests, "attraction": attrs},
                "C0", km, origin_table="cities")
    return p, db
