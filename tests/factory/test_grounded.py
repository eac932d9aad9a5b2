"""Decision schemas grounded in the environment: a constrained decoder can only name the
problem's slots, the named slot's own columns (numeric ones where a cost is meant) and
units that exist, while every kind's well-formed constraints still pass."""

import jsonschema
import pytest

from envfactory.factory.agents.model import constraint_schema, grounded
from envfactory.verifiers.constraints import KINDS
from tests.verifiers.conftest import env  # noqa: F401  (the 3-day trip problem fixture)


def _ok(schema, value) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def test_names_are_the_problems_own(env):  # noqa: F811
    p, _ = env
    agg = grounded(KINDS["aggregate"].schema, p)
    assert _ok(agg, {"slot": "hotel", "column": "rating", "value": 4.0})
    assert not _ok(agg, {"slot": "room", "column": "rating", "value": 4.0})       # no such slot
    assert not _ok(agg, {"slot": "city", "column": "rating", "value": 4.0})       # not the city table's
    assert not _ok(agg, {"slot": "hotel", "column": "hotel_id", "value": 4.0})    # the key is no attribute
    budget = grounded(KINDS["total_budget"].schema, p)
    assert _ok(budget, {"max": 900, "costs": {"hotel": "price_per_night", "restaurant": "avg_cost"}})
    assert not _ok(budget, {"max": 900, "costs": {"hotel": "name"}})               # a cost is numeric
    assert not _ok(budget, {"max": 900, "costs": {"spa": "price"}})
    cond = grounded(KINDS["conditional_budget"].schema, p)
    good = {"unit": 2, "if_slot": "hotel", "if_cost": "price_per_night", "threshold": 100,
            "then_costs": {"restaurant": "avg_cost"}, "max": 50}
    assert _ok(cond, good)
    assert not _ok(cond, good | {"unit": 4})                                      # a 3-day plan
    assert not _ok(cond, good | {"if_cost": "avg_cost"})                          # not the hotel's
    ad = grounded(KINDS["all_different"].schema, p)
    assert _ok(ad, {"slot": "hotel"}) and _ok(ad, {"slot": "hotel", "column": None})
    assert _ok(ad, {"slot": "restaurant", "column": "cuisine"}) and not _ok(ad, {"slot": "hotel", "column": "cuisine"})
    assert list(grounded(KINDS["sum"].schema, p)["anyOf"][0]["properties"]) == list(KINDS["sum"].schema["properties"])


def test_a_data_choice_narrows_the_columns(env):  # noqa: F811
    p, _ = env

    class Only:
        def allows(self, table, column):
            return table != "hotels" or column == "stars"

    agg = grounded(KINDS["attribute"].schema, p, Only())
    assert _ok(agg, {"slot": "hotel", "column": "stars", "op": ">=", "value": 4, "unit": 0})
    assert not _ok(agg, {"slot": "hotel", "column": "rating", "op": ">=", "value": 4, "unit": 0})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_grounds_to_a_schema_that_still_has_members(env, kind):  # noqa: F811
    p, _ = env
    schema = constraint_schema([kind], problem=p)
    assert schema["properties"]["constraints"]["items"]["anyOf"], kind
    jsonschema.Draft202012Validator.check_schema(schema)
