"""Region partitions over the built-in trip_planning data: every environment of a run gets its
own member set, so no two environments are built from the same cities (the near-duplicates
a 2,000-environment run found: two centers a few km apart, Kfar Saba and Hod Hasharon, with
the same seven nearest cities)."""

from __future__ import annotations

import pytest

from envfactory.factory.partition import choose_parts
from envfactory.factory.seed import load_seed, resolve_seed
from envfactory.sandboxes.catalog import catalog_for


@pytest.fixture(scope="module")
def trip_low_floor(tmp_path_factory):
    """trip_planning with its population floor at 50,000 (as benchmarks/scale.py runs it)."""
    src = resolve_seed("trip_planning")
    text = src.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("min_population"))
    path = tmp_path_factory.mktemp("seed") / "trip_planning.toml"
    path.write_text(text.replace(line, "min_population = 50000", 1))
    seed = load_seed(path)
    return seed, catalog_for(seed, path)


def test_regions_have_distinct_member_sets_and_centers(trip_low_floor):
    seed, cat = trip_low_floor
    parts = choose_parts(seed, cat, 7, 5000)  # more than the data has: every region it can give
    assert len(parts) > 2000
    member_sets = [frozenset(p.members) for p in parts]
    assert len(set(member_sets)) == len(parts)
    centers = [p.center_id for p in parts]
    assert len(set(centers)) == len(parts)
    # no center is a member of an earlier environment's region
    earlier: set[str] = set()
    for p in parts:
        assert p.center_id not in earlier
        earlier.update(p.members)
    assert all(len(p.members) == seed.partition.size for p in parts)


def test_regions_are_a_pure_function_of_the_run_seed(trip_low_floor):
    seed, cat = trip_low_floor
    a = choose_parts(seed, cat, 7, 50)
    assert a == choose_parts(seed, cat, 7, 50)
    assert a != choose_parts(seed, cat, 8, 50)
    # the first environments of a larger run are those of a smaller one
    assert choose_parts(seed, cat, 7, 80)[:50] == a
