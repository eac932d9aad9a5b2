"""Every constraint kind, through the whole chain: the DFS counter and CP-SAT agree on the
number of plans; a satisfying plan scores 1 and a violating plan scores 0 in the generated
verifier, with the kind's own check named as the failure."""

from __future__ import annotations

import random
import re

import pytest

from envfactory.factory.seed import PoolItem
from envfactory.verifiers.codegen import load_verifier, render_verifier
from envfactory.verifiers.constraints import KINDS, Constraint, get_kind, validate
from envfactory.verifiers.count import count_plans
from envfactory.verifiers.solver import confirm, count_solutions, extreme_sum

COSTS = {"hotel": "price_per_night", "restaurant": "avg_cost", "attraction": "ticket_price"}

# one representative constraint per kind, chosen so some plans pass and some fail
CASES = {
    "all_different": Constraint("all_different", "all_different_city", {"slot": "city"}),
    "attribute": Constraint("attribute", "attribute_hotel_stars",
                            {"slot": "hotel", "column": "stars", "op": ">=", "value": 4, "unit": 0}),
    "total_budget": Constraint("total_budget", "total_budget", {"max": 330, "costs": COSTS}),
    "unit_budget": Constraint("unit_budget", "unit_budget", {"max": 120, "costs": COSTS}),
    "conditional_budget": Constraint("conditional_budget", "conditional_budget", {
        "unit": 2, "if_slot": "hotel", "if_cost": "price_per_night", "threshold": 70,
        "then_costs": {"restaurant": "avg_cost", "attraction": "ticket_price"}, "max": 30}),
    "aggregate": Constraint("aggregate", "aggregate_restaurant_rating",
                            {"slot": "restaurant", "column": "rating", "value": 4.2}),
    "distance": Constraint("distance", "distance", {"slot": "city", "max_km": 150, "from_origin": True}),
    "distinct_count": Constraint("distinct_count", "distinct_restaurant_cuisine",
                                 {"slot": "restaurant", "column": "cuisine", "min": 3}),
    "schedule": Constraint("schedule", "schedule", {
        "slots": ["attraction", "restaurant"], "start": 9, "end": 19.5,
        "duration": {"attraction": "duration_hours", "restaurant": "meal_hours"},
        "opens": {"attraction": "opens_hour", "restaurant": "opens_hour"},
        "closes": {"attraction": "closes_hour", "restaurant": "closes_hour"}}),
    "sum": Constraint("sum", "sum_hotel_rating", {"slot": "hotel", "column": "rating", "op": ">=", "value": 12.5,
                                                  "scope": "total"}),
    # a model-written check: ties two slots of a unit in a way no other kind can
    "check": Constraint("check", "check_1", {
        "scope": "unit", "expr": 'unit["hotel"]["stars"] + unit["restaurant"]["rating"] >= 7.5',
        "text": "Each day, the hotel's stars plus the restaurant's rating must be at least 7.5"}),
}


def test_every_kind_has_a_case():
    assert set(CASES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_counter_matches_cp_sat(env, kind):
    p, _ = env
    cons = [CASES[kind]]
    ours = count_plans(p, cons, 100_000)
    cp = count_solutions(p, cons, 100_000)
    assert not ours.capped and cp.complete and not cp.capped
    assert ours.count == cp.count
    assert set(ours.plans) == set(cp.plans)
    assert 0 < ours.count < count_plans(p, [], 100_000).count  # the constraint bites


@pytest.mark.parametrize("kind", sorted(CASES))
def test_satisfying_and_violating_answers(env, kind, tmp_path):
    p, db = env
    c = CASES[kind]
    allowed = set(count_plans(p, [c], 100_000).plans)
    everything = count_plans(p, [], 100_000).plans
    good = sorted(allowed)[len(allowed) // 2]
    bad = next(plan for plan in everything if plan not in allowed)
    assert confirm(p, [c], good) and not confirm(p, [c], bad)
    path = tmp_path / "v.py"
    path.write_text(render_verifier("t-L0", "test", 0, p, [c]))
    verify = load_verifier(path).verify
    ok = verify(p.plan_dict(good), str(db))
    assert ok["score"] == 1.0, ok
    res = verify(p.plan_dict(bad), str(db))
    assert res["score"] == 0.0
    failed = [ch["name"] for ch in res["checks"] if not ch["passed"]]
    assert failed == [c.name], res
    assert get_kind(kind).describe(c, p).endswith(".")


def test_wrong_shapes_score_zero_with_a_reason(env, tmp_path):
    p, db = env
    path = tmp_path / "v.py"
    path.write_text(render_verifier("t-L0", "test", 0, p, [CASES["total_budget"]]))
    verify = load_verifier(path).verify
    good = p.plan_dict(count_plans(p, [CASES["total_budget"]], 10).plans[0])
    unit = good["days"][0]
    shapes = [None, [], {}, "", "not json", 7, {"days": None}, {"days": good["days"][:2]},
              {"days": good["days"] + [unit]}, {"days": [dict(unit, city=5)] + good["days"][1:]},
              {"days": [{k: v for k, v in unit.items() if k != "hotel"}] + good["days"][1:]},
              {"days": [dict(unit, spa="x")] + good["days"][1:]}, dict(good, extra=1),
              {"days": [dict(unit, hotel="NOPE")] + good["days"][1:]},
              {"days": [dict(unit, city="C0")] + good["days"][1:]}]
    for answer in shapes:
        res = verify(answer, str(db))
        assert res["score"] == 0.0, answer
        assert any(not ch["passed"] and ch["reason"] for ch in res["checks"])


@pytest.mark.parametrize("kind", sorted(CASES))
def test_proposals_only_restrict(env, kind):
    """Ladder moves must only remove plans: the ladder counts a move by filtering."""
    p, _ = env
    base = [CASES["total_budget"]] if kind != "total_budget" else [CASES[kind]]
    ref = count_plans(p, base, 10).plans[0]
    item = {"all_different": PoolItem(kind=kind, slot="hotel"), "attribute": PoolItem(kind=kind, slot="hotel", column="rating"),
            "aggregate": PoolItem(kind=kind, slot="attraction", column="rating"),
            "distance": PoolItem(kind=kind, slot="city"),
            "distinct_count": PoolItem(kind=kind, slot="restaurant", column="cuisine")}.get(kind, PoolItem(kind=kind))
    before = set(count_plans(p, base, 100_000).plans)
    for cand in get_kind(kind).propose(item, p, base, ref, random.Random(0),
                                     {"conditional_unit": 2, "optimum": extreme_sum}):
        cons = [c for c in base if c.name != cand.name] + [cand]
        after = set(count_plans(p, cons, 100_000).plans)
        assert after <= before


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_kind_publishes_a_schema_its_constraints_meet(env, kind):
    import jsonschema

    from envfactory.verifiers.constraints import ConstraintError, validate

    p, _ = env
    schema = KINDS[kind].schema
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert validate(CASES[kind], p).params.keys() == CASES[kind].params.keys()
    with pytest.raises(ConstraintError, match=r"params|is a required property|Additional properties"):
        validate(Constraint(kind, "x", dict(CASES[kind].params, surprise=1)), p)


def test_a_plan_scope_check_counts_exactly(env):
    """A check over the whole plan has no CP-SAT encoding: the counter must equal the
    brute-force filter of every structural plan."""
    p, _ = env
    c = validate(Constraint("check", "check_2", {
        "scope": "plan", "expr": 'len(set(u["restaurant"]["cuisine"] for u in units)) == len(units) '
                                 'and max(u["hotel"]["rating"] for u in units) >= 4.5',
        "text": "Every restaurant serves a different cuisine, and some hotel is rated at least 4.5"}), p)
    everything = count_plans(p, [], 100_000).plans
    want = [plan for plan in everything
            if len({p.rows["restaurant"][u[2]]["cuisine"] for u in plan}) == len(plan)
            and max(p.rows["hotel"][u[1]]["rating"] for u in plan) >= 4.5]
    got = count_plans(p, [c], 100_000)
    assert 0 < got.count < len(everything) and set(got.plans) == set(want)


@pytest.mark.parametrize("expr,reason", [
    ('unit["hotel"].__class__', "Attribute is not allowed"),
    ('__import__("os")', "only len, sum, min"),
    ('x > 1', "unknown name 'x'"),
    ('open("/etc/passwd")', "only len, sum, min"),
    ('[0 for x in unit["hotel"]["name"]]', "iterate over units only"),
    ('unit["hotel"]["name"] * unit["city"]["population"] > ""', "multiplies something that is not a number"),
    ('[lambda: 1]', "Lambda is not allowed"),
    ('unit["spa"]["price"] > 3', "reads slot 'spa'"),
    ('unit["hotel"]["pool"] > 3', "not a column of hotels"),
    ('2 ** 100 > 1', "Pow is not allowed"),
    ('unit["hotel"]["stars"] >', "not a Python expression"),
    ('True', "reads no column"),
])
def test_unsafe_or_wrong_checks_are_refused_before_evaluation(env, expr, reason):
    from envfactory.verifiers.constraints import ConstraintError

    p, _ = env
    with pytest.raises(ConstraintError, match=re.escape(reason)):
        validate(Constraint("check", "c", {"scope": "unit", "expr": expr, "text": "some requirement here"}), p)
