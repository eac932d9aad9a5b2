"""Plan shapes beyond units x slots: chains (each unit continues from the previous one) and
selections (a set of distinct rows, in any order). The DFS counter and CP-SAT must agree
plan for plan, one constraint at a time and with several combined; the generated verifier
must agree with the oracle on every plan of the structure and on broken ones."""

from __future__ import annotations

import itertools
import random

import duckdb
import pytest

from envfactory.verifiers import structure
from envfactory.verifiers.codegen import load_verifier, render_verifier
from envfactory.verifiers.constraints import Constraint, ConstraintError, validate
from envfactory.verifiers.count import count_plans
from envfactory.verifiers.mutants import judge
from envfactory.verifiers.problem import LinkView, Problem, SlotView
from envfactory.verifiers.solver import count_solutions

SEED = 20261202
AIRPORTS = {"iata": "VARCHAR", "name": "VARCHAR", "altitude_ft": "INTEGER", "size": "VARCHAR"}
ROUTES = {"route_id": "VARCHAR", "airline": "VARCHAR", "src": "VARCHAR", "dst": "VARCHAR", "distance_km": "INTEGER"}
FILMS = {"film_id": "VARCHAR", "genre": "VARCHAR", "director": "VARCHAR", "runtime_min": "INTEGER",
         "rating": "DOUBLE"}


def _write(db, tables):
    con = duckdb.connect(str(db))
    for name, (types, rows) in tables.items():
        con.execute(f"CREATE TABLE {name} ({', '.join(f'{c} {t}' for c, t in types.items())})")
        con.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * len(types))})",
                        [tuple(r[c] for c in types) for r in rows.values()])
    con.close()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A 3-leg itinerary from hub A0 over 6 airports and ~20 airline routes."""
    rng = random.Random(SEED)
    print(f"chain instance seed {SEED}")
    airports = {f"A{i}": {"iata": f"A{i}", "name": f"Airport {i}", "altitude_ft": rng.randint(0, 3000),
                          "size": rng.choice(["large", "medium"])} for i in range(6)}
    routes = {}
    for a, b in itertools.permutations(airports, 2):
        for airline in ("XA", "YB"):
            if rng.random() < 0.3:
                rid = f"{airline}-{a}-{b}"
                routes[rid] = {"route_id": rid, "airline": airline, "src": a, "dst": b,
                               "distance_km": rng.randint(200, 1500)}
    db = tmp_path_factory.mktemp("chain") / "sandbox.duckdb"
    _write(db, {"airports": (AIRPORTS, airports), "routes": (ROUTES, routes)})
    slots = [SlotView("flight", "routes", "route_id", (LinkView("src", "flight", "dst", True),), None, ROUTES),
             SlotView("arrival", "airports", "iata", (LinkView("iata", "flight", "dst", False),), None, AIRPORTS)]
    rows = {"flight": routes, "arrival": {k: v for k, v in airports.items() if k != "A0"}}
    return Problem("leg", 3, slots, rows, "A0", origin_table="airports"), db


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    """Pick 3 of 9 films."""
    rng = random.Random(SEED + 1)
    films = {f"F{i}": {"film_id": f"F{i}", "genre": rng.choice(["drama", "comedy", "horror"]),
                       "director": rng.choice(["Ann", "Bo", "Cy", "Di"]), "runtime_min": rng.randint(80, 160),
                       "rating": round(rng.uniform(5.0, 9.0), 1)} for i in range(9)}
    db = tmp_path_factory.mktemp("sel") / "sandbox.duckdb"
    _write(db, {"films": (FILMS, films)})
    slots = [SlotView("film", "films", "film_id", (), None, FILMS)]
    return Problem("film", 3, slots, {"film": films}, None, unordered=True), db


CHAIN = {
    "all_different": Constraint("all_different", "all_different_arrival", {"slot": "arrival"}),
    "sum": Constraint("sum", "sum_flight_distance_km", {"slot": "flight", "column": "distance_km", "op": "<=",
                                                       "value": 2600, "scope": "total"}),
    "attribute": Constraint("attribute", "attribute_arrival_size", {"slot": "arrival", "column": "size", "op": "in",
                                                                    "value": ["large"], "unit": 3}),
    "distinct_count": Constraint("distinct_count", "distinct_flight_airline", {"slot": "flight", "column": "airline",
                                                                              "min": 2}),
}
SELECTION = {
    "all_different": Constraint("all_different", "all_different_film", {"slot": "film"}),
    "director": Constraint("all_different", "all_different_film_director", {"slot": "film", "column": "director"}),
    "sum": Constraint("sum", "sum_film_runtime_min", {"slot": "film", "column": "runtime_min", "op": "<=",
                                                     "value": 360, "scope": "total"}),
    "genres": Constraint("distinct_count", "distinct_film_genre", {"slot": "film", "column": "genre", "min": 2}),
    "aggregate": Constraint("aggregate", "aggregate_film_rating", {"slot": "film", "column": "rating", "value": 6.5}),
    "attribute": Constraint("attribute", "attribute_film_genre", {"slot": "film", "column": "genre", "op": "not in",
                                                                  "value": ["horror"], "unit": 0}),
}


def _sets(cons, combos):
    out = [[c] for c in cons.values()]
    for r in combos:
        out += [list(x) for x in itertools.combinations(cons.values(), r)]
    return out


def _agree(p, cons):
    ours = count_plans(p, cons, 10 ** 6)
    cp = count_solutions(p, cons, 10 ** 6)
    assert cp.complete and not ours.capped and not cp.capped
    assert set(ours.plans) == set(cp.plans) and ours.count == cp.count
    return ours


@pytest.mark.parametrize("combo", range(len(_sets(CHAIN, (2, 4)))))
def test_chain_counter_matches_cp_sat(chain, combo):
    p, _ = chain
    cons = _sets(CHAIN, (2, 4))[combo]
    res = _agree(p, cons)
    free = count_plans(p, [], 10 ** 6)
    assert res.count < free.count  # the constraints bite
    for plan in res.plans:  # every counted plan continues from the hub, leg to leg
        assert not structure.problems(p, plan)
        assert p.rows["flight"][plan[0][0]]["src"] == "A0"


@pytest.mark.parametrize("combo", range(len(_sets(SELECTION, (2, 3, 6)))))
def test_selection_counter_matches_cp_sat(selection, combo):
    p, _ = selection
    cons = [SELECTION["all_different"]] + _sets(SELECTION, (2, 3, 6))[combo]
    res = _agree(p, cons)
    for plan in res.plans:  # each set once, in increasing id order
        assert list(plan) == sorted(plan) and len(set(plan)) == len(plan)


def test_selection_counts_sets_not_orders(selection):
    p, _ = selection
    assert count_plans(p, [SELECTION["all_different"]], 10 ** 6).count == 84  # C(9, 3)


def _verdicts(p, db, cons, plans, tmp_path):
    path = tmp_path / "v.py"
    path.write_text(render_verifier("t-L0", "test", 0, p, cons))
    v = load_verifier(path)
    for plan in plans:
        ans = p.plan_dict(plan)
        got = v.verify(ans, str(db))["score"]
        want = 1.0 if judge(p, cons, ans).feasible else 0.0
        assert got == want, (plan, v.verify(ans, str(db))["checks"])


def test_chain_verifier_agrees_with_the_oracle(chain, tmp_path):
    p, db = chain
    cons = list(CHAIN.values())
    rng = random.Random(SEED)
    good = count_plans(p, cons, 10 ** 6).plans
    opts = [o[0] for o in structure.unit_options(p)]
    broken = [tuple(rng.choice(opts) for _ in range(3)) for _ in range(40)]  # mostly off the chain
    assert any(structure.problems(p, b) for b in broken)
    _verdicts(p, db, cons, good + broken, tmp_path)


def test_selection_verifier_accepts_any_order(selection, tmp_path):
    p, db = selection
    cons = [SELECTION["all_different"], SELECTION["sum"], SELECTION["genres"]]
    good = count_plans(p, cons, 10 ** 6).plans
    assert good
    shuffled = [tuple(reversed(plan)) for plan in good]
    repeated = [(plan[0], plan[0], plan[1]) for plan in good[:5]]
    _verdicts(p, db, cons, good + shuffled + repeated, tmp_path)
    assert all(judge(p, cons, p.plan_dict(plan)).feasible for plan in shuffled)


@pytest.mark.parametrize("bad,reason", [
    (Constraint("attribute", "a", {"slot": "film", "column": "runtime_min", "op": ">=", "value": 99.5, "unit": 0}),
     "not a whole number"),
    (Constraint("attribute", "a", {"slot": "film", "column": "genre", "op": ">=", "value": "drama", "unit": 0}),
     "needs a numeric column"),
    (Constraint("attribute", "a", {"slot": "film", "column": "plot", "op": "==", "value": "x", "unit": 0}),
     "'plot' is not a column"),
    (Constraint("sum", "s", {"slot": "film", "column": "runtime_min", "op": "<", "value": 3, "scope": "total"}),
     "is not one of"),
    (Constraint("attribute", "a", {"slot": "film", "column": "rating", "op": ">=", "value": 7, "unit": 2}),
     "a selection's units have none"),
    (Constraint("distance", "d", {"slot": "film", "max_km": 10, "from_origin": True}), "a selection's units have none"),
    (Constraint("teleport", "t", {}), "unknown kind"),
])
def test_malformed_constraints_are_rejected_with_a_reason(selection, bad, reason):
    p, _ = selection
    with pytest.raises(ConstraintError, match=reason):
        validate(bad, p)


def test_values_are_cast_to_the_column_type(selection):
    p, _ = selection
    c = validate(Constraint("attribute", "a", {"slot": "film", "column": "rating", "op": ">=", "value": 7,
                                               "unit": 0}), p)
    assert c.params["value"] == 7.0 and isinstance(c.params["value"], float)


def test_time_windows_combined_with_other_constraints(env):
    """A day's timetable (attraction from 9:00 or its opening, then dinner, each within its
    opening hours, the day ending by a set hour) with budgets, distinctness and distances:
    the counter and CP-SAT agree plan for plan, and the timetable itself bites."""
    from tests.verifiers.test_constraints import CASES

    p, _ = env
    sched = CASES["schedule"]
    for cons in ([sched], [sched, CASES["all_different"], CASES["total_budget"]],
                 [sched, CASES["all_different"], CASES["distance"]], [sched, CASES["unit_budget"], CASES["attribute"]]):
        with_t = _agree(p, cons)
        without = count_plans(p, [c for c in cons if c is not sched], 10 ** 6)
        assert 0 < with_t.count < without.count


AIRLINES = {"code": "VARCHAR", "name": "VARCHAR", "alliance": "VARCHAR"}


@pytest.fixture(scope="module")
def hops(tmp_path_factory):
    """Links through a relation table: 3 stops from hub A0, each reached from the previous
    stop by some route (`routes(dst, src)`), each with a carrier that flies into it
    (`routes(airline, dst)`, a same-unit link). No slot picks a route itself."""
    rng = random.Random(SEED + 2)
    print(f"relation instance seed {SEED + 2}")
    airports = {f"A{i}": {"iata": f"A{i}", "name": f"Airport {i}", "altitude_ft": rng.randint(0, 3000),
                          "size": rng.choice(["large", "medium"])} for i in range(7)}
    airlines = {c: {"code": c, "name": f"{c} Air", "alliance": rng.choice(["sky", "star"])}
                for c in ("XA", "YB", "ZC")}
    routes = {}
    for a, b in itertools.permutations(airports, 2):
        for airline in airlines:
            if rng.random() < 0.3:
                rid = f"{airline}-{a}-{b}"
                routes[rid] = {"route_id": rid, "airline": airline, "src": a, "dst": b,
                               "distance_km": rng.randint(200, 1500)}
    db = tmp_path_factory.mktemp("hops") / "sandbox.duckdb"
    _write(db, {"airports": (AIRPORTS, airports), "airlines": (AIRLINES, airlines), "routes": (ROUTES, routes)})
    hop, fly = ("routes", "dst", "src"), ("routes", "airline", "dst")
    slots = [SlotView("stop", "airports", "iata", (LinkView("iata", "stop", "iata", True, hop),), None, AIRPORTS),
             SlotView("carrier", "airlines", "code", (LinkView("code", "stop", "iata", False, fly),), None, AIRLINES)]
    pairs = {hop: frozenset((r["dst"], r["src"]) for r in routes.values()),
             fly: frozenset((r["airline"], r["dst"]) for r in routes.values())}
    rows = {"stop": {k: v for k, v in airports.items() if k != "A0"}, "carrier": airlines}
    return Problem("stop", 3, slots, rows, "A0", origin_table="airports", pairs=pairs), db, routes


HOPS = {
    "all_different": Constraint("all_different", "all_different_stop", {"slot": "stop"}),
    "altitude": Constraint("sum", "sum_stop_altitude_ft", {"slot": "stop", "column": "altitude_ft", "op": "<=",
                                                          "value": 4500, "scope": "total"}),
    "carriers": Constraint("distinct_count", "distinct_carrier_code", {"slot": "carrier", "column": "code", "min": 2}),
    "alliance": Constraint("attribute", "attribute_carrier_alliance", {"slot": "carrier", "column": "alliance",
                                                                       "op": "in", "value": ["star"], "unit": 2}),
}


@pytest.mark.parametrize("combo", range(len(_sets(HOPS, (2, 4)))))
def test_relation_links_counter_matches_cp_sat(hops, combo):
    p, _, routes = hops
    cons = _sets(HOPS, (2, 4))[combo]
    res = _agree(p, cons)
    assert res.count < count_plans(p, [], 10 ** 6).count
    flown = {(r["src"], r["dst"]) for r in routes.values()}
    into = {(r["airline"], r["dst"]) for r in routes.values()}
    for plan in res.plans:  # each stop reached by a real route, each carrier flying into its stop
        stops = ["A0"] + [u[0] for u in plan]
        assert all((a, b) in flown for a, b in zip(stops, stops[1:]))
        assert all((u[1], u[0]) in into for u in plan)


def test_relation_links_free_count_by_hand(hops):
    """With no constraints: every stop sequence along routes, times the carriers into each."""
    p, _, routes = hops
    nxt: dict[str, set] = {}
    carriers: dict[str, set] = {}
    for r in routes.values():
        if r["dst"] != "A0":
            nxt.setdefault(r["src"], set()).add(r["dst"])
            carriers.setdefault(r["dst"], set()).add(r["airline"])
    want = sum(len(carriers[a]) * len(carriers[b]) * len(carriers[c])
               for a in nxt.get("A0", ()) for b in nxt.get(a, ()) for c in nxt.get(b, ()))
    assert want > 0 and count_plans(p, [], 10 ** 6).count == want


def test_relation_verifier_agrees_with_the_oracle(hops, tmp_path):
    p, db, _ = hops
    cons = [HOPS["all_different"], HOPS["carriers"]]
    rng = random.Random(SEED + 2)
    good = count_plans(p, cons, 10 ** 6).plans
    stops, carriers = sorted(p.rows["stop"]), sorted(p.rows["carrier"])
    broken = [tuple((rng.choice(stops), rng.choice(carriers)) for _ in range(3)) for _ in range(60)]
    assert good and sum(bool(structure.problems(p, b)) for b in broken) > 30
    _verdicts(p, db, cons, good + broken, tmp_path)
