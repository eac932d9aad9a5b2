"""Seed files: both built-ins load; malformed seeds fail with file, line and field."""

from __future__ import annotations


import pytest

from envfactory.factory.seed import SeedError, builtin_seeds, load_seed

TRIP = builtin_seeds()["trip_planning"].read_text()


def test_builtins_load():
    seeds = {n: load_seed(p) for n, p in builtin_seeds().items()}
    assert {"trip_planning", "event_tour"} <= set(seeds)
    assert seeds["trip_planning"].plan.units == 3 and seeds["event_tour"].plan.unit == "night"


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("old,new,anchor,field,message", [
    ('table = "hotels"\nlink', 'table = "hotel"\nlink', 'table = "hotel"', "plan.slots[1].table",
     "unknown table 'hotel'"),
    ("units = 3", "units = 0", "units = 0", "plan.units", "greater than or equal to 1"),
    ("units = 3", 'units = "three"', "units = ", "plan.units", "valid integer"),
    ('kind = "api"', 'kind = "ftp"', 'kind = "ftp"', "sources[3].kind", "'package', 'html', 'api' or 'js'"),
    ("count_cap = 4000", "count_cap = 4000\nspeed = 3", "speed = 3", "ladder.speed", "unknown field"),
    ('"distance:city",', '"teleport:city",', "pool = [", "ladder.pool", "unknown constraint kind 'teleport'"),
    ('cost = "avg_cost"', 'cost = "cuisine"', 'cost = "cuisine"', "plan.slots[2].cost", "must be an INTEGER column"),
    ('order_by = "avg_cost"', 'order_by = "price"', 'order_by = "price"', "tools[2].order_by",
     "'price' is not a column"),
])
def test_malformed_seed_names_file_line_and_field(tmp_path, old, new, anchor, field, message):
    assert old in TRIP
    text = TRIP.replace(old, new, 1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SeedError) as e:
        load_seed(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{_line_of(text, anchor)}: {field}: "), msg
    assert message in msg
    assert "\n" not in msg


def test_syntax_error_gives_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(TRIP.replace("units = 3", "units = = 3", 1))
    with pytest.raises(SeedError, match=rf"^{path}:{_line_of(TRIP, 'units = 3')}: TOML syntax"):
        load_seed(path)


def test_missing_field_and_unreadable_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(TRIP.replace('unit = "day"\n', "", 1))
    with pytest.raises(SeedError, match=r"plan\.unit: required field missing"):
        load_seed(path)
    with pytest.raises(SeedError, match="cannot read seed"):
        load_seed(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SeedError):
        load_seed(tmp_path / "bin.toml")
