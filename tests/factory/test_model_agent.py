"""`factory generate --agent openai` against a real HTTP server on loopback scripted as a
model: it proposes constraints as JSON, the agent checks every one, the ladder counts and
judges, and the run reports what was rejected. A model that proposes nothing usable makes
the run fail with one clear line, never a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import duckdb

from tests.factory.scripted_server import ScriptedServer, completion

COSTS = {"hotel": "price_per_night", "restaurant": "avg_cost", "attraction": "ticket_price"}
BASE = [{"kind": "all_different", "params": {"slot": s}} for s in ("hotel", "restaurant", "attraction")]
MENU = [
    {"kind": "all_different", "params": {"slot": "city"}},
    {"kind": "attribute", "params": {"slot": "hotel", "column": "stars", "op": ">=", "value": 2, "unit": 0}},
    {"kind": "aggregate", "params": {"slot": "restaurant", "column": "rating", "value": 3.5}},
    {"kind": "distinct_count", "params": {"slot": "restaurant", "column": "cuisine", "min": 2}},
    {"kind": "attribute", "params": {"slot": "hotel", "column": "stars", "op": ">=", "value": 3, "unit": 0}},
    {"kind": "aggregate", "params": {"slot": "restaurant", "column": "rating", "value": 4.0}},
    {"kind": "distinct_count", "params": {"slot": "restaurant", "column": "cuisine", "min": 3}},
    {"kind": "attribute", "params": {"slot": "hotel", "column": "rating", "op": ">=", "value": 4.0, "unit": 0}},
    {"kind": "aggregate", "params": {"slot": "attraction", "column": "rating", "value": 4.2}},
    {"kind": "distinct_count", "params": {"slot": "attraction", "column": "category", "min": 3}},
    {"kind": "attribute", "params": {"slot": "hotel", "column": "stars", "op": ">=", "value": 4, "unit": 0}},
    {"kind": "aggregate", "params": {"slot": "restaurant", "column": "rating", "value": 4.4}},
    # on one day only: these tell apart plans that differ only in their days' order
    {"kind": "attribute", "params": {"slot": "hotel", "column": "rating", "op": ">=", "value": 3.5, "unit": 1}},
    {"kind": "attribute", "params": {"slot": "restaurant", "column": "rating", "op": ">=", "value": 3.5, "unit": 2}},
    {"kind": "attribute", "params": {"slot": "attraction", "column": "rating", "op": ">=", "value": 3.5, "unit": 3}},
    {"kind": "attribute", "params": {"slot": "hotel", "column": "stars", "op": ">=", "value": 3, "unit": 1}},
    {"kind": "attribute", "params": {"slot": "restaurant", "column": "rating", "op": ">=", "value": 3.0, "unit": 0}},
]
# a check the library cannot express: two slots of one unit together
CHECK = {"kind": "check", "params": {
    "scope": "unit", "expr": 'unit["attraction"]["ticket_price"] <= unit["restaurant"]["avg_cost"]',
    "text": "Each day, the attraction's ticket costs no more than the restaurant's average meal"}}
# the optional airports table left out, and the attractions' durations and hours too
DATA = {"tables": ["cities", "hotels", "restaurants", "attractions"],
        "columns": {"attractions": ["attraction_id", "city_id", "category", "ticket_price", "rating"]},
        "why": "the plan's tables; durations are not needed"}
LEFT_OUT = {"kind": "aggregate", "params": {"slot": "attraction", "column": "duration_hours", "value": 2.0}}
UNSAFE = {"kind": "check", "params": {"scope": "unit", "expr": 'unit["hotel"].__class__ is None',
                                      "text": "an attempt to reach the interpreter"}}
REFUSED = {"kind": "attribute", "params": {"slot": "hotel", "column": "colour", "op": "==", "value": "red", "unit": 0}}


def planner(body, n):
    """A scripted model: level 0 from the cheapest cost it is told (tightened or loosened as
    the agent's feedback says), moves from a fixed menu, one unusable item now and then."""
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    if "The data catalog:" in users[0]:
        if len(users) == 1:  # a required table left out: refused with the reason
            return completion(json.dumps({"tables": ["cities", "restaurants", "attractions"], "columns": {}}))
        return completion(json.dumps(DATA))
    if "Write a Python tool function" in users[0]:
        return completion(json.dumps({"code": _tool_code(users)}))
    if "Propose the level-0 task" in users[0]:
        if len(users) == 1:
            return completion("Sure, here is a plan!")  # not JSON: sent back with the error
        cheapest = int(re.search(r"cheapest plan costs (\d+)", users[0])[1])
        lo, hi, factor = 1.0, None, 1.6  # bisect the budget over the cheapest cost, from the feedback
        for said in users[2:]:
            if "tighten" in said:
                hi = factor
            elif "loosen" in said:
                lo = factor
            factor = (lo + hi) / 2 if hi else factor * 1.6
        budget = {"kind": "total_budget", "params": {"max": int(cheapest * factor), "costs": COSTS}}
        return completion(json.dumps({"constraints": BASE + [budget]}))
    level = int(re.search(r"ways to make level (\d+)", users[0])[1])
    k = (level * 2 + n) % len(MENU)
    moves = [MENU[(k + i) % len(MENU)] for i in range(2)] + ([REFUSED, UNSAFE, LEFT_OUT] if "verdicts" not in users[0] else [])
    if level in (1, 2):
        moves.append(CHECK)  # counted, then through the validation harness
    # a tighter budget always removes plans: replace the current one (named in the prompt)
    name, cap = re.search(r"- \[(total_budget\w*)\] The total cost .* at most \$(\d+)", users[0]).groups()
    for f in (0.99, 0.97):
        moves.append({"kind": "total_budget", "replaces": name, "params": {"max": int(int(cap) * f), "costs": COSTS}})
    return completion(json.dumps({"moves": moves}))


def _tool_code(users: list[str]) -> str:
    """First an infinite loop (the sandbox's time limit rejects it), then a correct query."""
    name, param = re.search(r"Signature: def (\w+)\((\w+)", users[0]).groups()
    table = re.search(r"Table (\w+):", users[0])[1]
    cols = re.search(r"with the columns ([\w, ]+)\.", users[0])[1]
    if len(users) == 1:
        return f"def {name}({param}: str) -> str:\n    while True:\n        pass"
    return (f"def {name}({param}: str) -> str:\n"
            f"    rows = query('SELECT {cols} FROM {table} WHERE {param} = ?', [{param}])\n"
            f"    return respond(rows) if rows else error('no such row')")


def _factory(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_generate_with_a_model_agent_builds_valid_bundles_and_counts_rejections(tmp_path):
    out = tmp_path / "out"
    with ScriptedServer(planner) as srv:
        r = _factory("generate", "trip_planning", "--envs", "2", "--out", str(out), "--workers", "1",
                     "--agent", "openai", "--model", "scripted", "--base-url", srv.base_url)
        assert r.returncode == 0, r.stdout + r.stderr
        bodies = srv.bodies()
    batch = json.loads((out / "batch.json").read_text())
    assert batch["agent"]["kind"] == "openai" and batch["agent"]["rejected"] >= 2
    assert batch["agent"]["proposals"] > batch["agent"]["rejected"]
    said = re.search(r"agent openai \(scripted\): (\d+) proposals, (\d+) rejected", r.stderr)
    assert said and int(said[2]) == batch["agent"]["rejected"]
    written = 0
    for e in batch["envs"]:
        counts = [int(c) for c in e["counts"]]
        assert e["levels"] == 6 and all(a > b >= 1 for a, b in zip(counts, counts[1:])), e
        manifest = json.loads((out / e["path"] / "manifest.json").read_text())
        assert manifest["agent"]["kind"] == "openai" and manifest["agent"]["requests"] > 0
        tasks = [json.loads(x) for x in (out / e["path"] / "tasks" / "tasks.jsonl").read_text().splitlines()]
        assert all(t["move"].startswith(("base", "add model:", "tighten model:")) for t in tasks)
        assert tasks[0]["constraints"][-1]["kind"] == "total_budget"
        if manifest["agent"]["tools_written"]:  # the model's body is in the tools, and it answers
            src = (out / e["path"] / "tools" / "tools.py").read_text()
            assert "def _written_get_" in src and "while True" not in src
            written += 1
    assert written >= 1 and batch["agent"]["tools_rejected"] >= 0
    # the model's data choice: what the sandbox loaded, and what the manifest says
    assert manifest["agent"]["data"] == {k: v for k, v in DATA.items()}
    con = duckdb.connect(str(out / e["path"] / "db" / "sandbox.duckdb"), read_only=True)
    assert "airports" not in {t for (t,) in con.execute("SHOW TABLES").fetchall()}
    con.close()
    assert "duration_hours" not in next(b for b in bodies if "Propose the level-0" in b["messages"][1]["content"]
                                        )["messages"][1]["content"]
    # written checks went through the validation harness, and the run says how many
    assert batch["agent"]["checks_tested"] >= 1 and batch["agent"]["data_defaults"] == 0
    assert re.search(r"(\d+) written checks through the harness \((\d+) rejected\)", r.stderr)[1] == str(
        batch["agent"]["checks_tested"])
    # the model was told why its unusable replies and moves were refused
    fed = [m["content"] for b in bodies for m in b["messages"] if m["role"] == "user"]
    assert any("That reply was not usable: no JSON value" in f for f in fed)
    assert any("refused before counting" in f and "colour" in f for f in fed)
    assert any("required tables left out: hotels" in f for f in fed)
    assert any("refused before counting" in f and "which the data choice left out" in f for f in fed)
    assert any("refused before counting" in f and "Attribute is not allowed" in f for f in fed)
    assert any("model:check" in f for f in fed)  # a model-written check was counted and judged
    assert any("rejected after running in the sandbox" in f and "timeout" in f for f in fed)
    assert all(b["model"] == "scripted" for b in bodies)
    r = _factory("validate", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "validation.json").read_text())
    assert report["totals"]["soundness"] == 1.0 and report["totals"]["failures"] == 0


def test_a_model_that_proposes_nothing_usable_makes_the_run_say_so(tmp_path):
    with ScriptedServer(lambda body, n: completion("I would love to help with your trip!")) as srv:
        r = _factory("generate", "trip_planning", "--envs", "1", "--out", str(tmp_path / "o"), "--workers", "1",
                     "--agent", "openai", "--base-url", srv.base_url)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("factory: error: only 0 of 1 environments could be built")
    assert "the model proposed no usable level-0 task" in line
    assert re.search(r"The openai agent made \d+ proposals; \d+ were rejected", line)


def test_an_unreachable_model_server_fails_cleanly(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = _factory("generate", "trip_planning", "--envs", "1", "--out", str(tmp_path / "o"), "--workers", "1",
                 "--agent", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "model server" in r.stderr and "gave up after" in r.stderr


def test_openai_agent_without_a_base_url_is_a_usage_error(tmp_path):
    r = _factory("generate", "trip_planning", "--envs", "1", "--out", str(tmp_path / "o"), "--agent", "openai")
    assert r.returncode == 2 and "needs --base-url" in r.stderr and "Traceback" not in r.stderr


def test_with_a_fallback_only_the_models_own_proposals_count_as_its_rejections(tmp_path):
    """The specialist that stands in for a useless model also proposes moves, and the ladder
    rejects many of them; those are not the model's rejections (seen against llama.cpp: 127
    'rejected' of 55 proposals before this was fixed)."""
    out = tmp_path / "o"
    with ScriptedServer(lambda body, n: completion("I would love to help with your trip!")) as srv:
        r = _factory("generate", "trip_planning", "--envs", "1", "--out", str(out), "--workers", "1",
                     "--agent", "openai", "--base-url", srv.base_url, "--fallback", "specialist",
                     "--agent-option", "rounds=1", "--agent-option", "attempts=1", "--agent-option", "base_attempts=1")
    assert r.returncode == 0, r.stderr
    agent = json.loads((out / "batch.json").read_text())["agent"]
    assert agent["fallbacks"] >= 5 and 0 < agent["rejected"] <= agent["proposals"], agent
