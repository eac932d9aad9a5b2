"""The validation harness that a model-written check passes at generation time
(`factory.checkgate`), on a real trip environment's sandbox: a sound check passes; one that
raises on real plans, or that no answer can be shown to break, is refused with the reason;
a shipped verifier never raises, whatever its checks do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from envfactory.factory.checkgate import CheckGate
from envfactory.factory.seed import load_seed
from envfactory.verifiers.codegen import load_verifier, render_verifier
from envfactory.verifiers.constraints import Constraint, validate
from envfactory.verifiers.mutants import plan_of
from envfactory.verifiers.problem import load_problem


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "out"
    r = subprocess.run([sys.executable, "-m", "envfactory.factory.cli", "generate", "trip_planning", "--envs", "1",
                        "--out", str(out), "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    path = next(p for p in out.iterdir() if p.is_dir())
    seed = load_seed(path / "seed.toml", check_data=False)
    con = duckdb.connect(str(path / "db" / "sandbox.duckdb"), read_only=True)
    p = load_problem(con, seed)
    con.close()
    task = json.loads((path / "tasks" / "tasks.jsonl").read_text().splitlines()[0])
    cons = [Constraint.from_json(c) for c in task["constraints"]]
    return path, p, cons, plan_of(p, task["reference_answer"])


def _check(p, expr, scope="unit", name="written"):
    return validate(Constraint("check", name, {"scope": scope, "expr": expr, "text": f"the model's rule: {expr}"}), p)


def test_a_sound_check_passes(env):
    path, p, cons, ref = env
    gate = CheckGate(p, "trip_planning", path / "db" / "sandbox.duckdb")
    # two slots of one unit compared, which no library kind can say; the bound is the
    # reference's own worst day, so the reference meets it and other plans may not
    slack = max(u["attraction"]["ticket_price"] - u["restaurant"]["avg_cost"] for u in p.plan_rows(ref))
    ok = _check(p, f'unit["attraction"]["ticket_price"] <= unit["restaurant"]["avg_cost"] + {slack}')
    assert gate(cons + [ok], [ok], ref, 1) is None, gate.rejected
    assert gate.stats() == {"checks_tested": 1, "checks_rejected": 0, "check_reasons": []}
    gate(cons + [ok], [ok], ref, 1)  # the same task again: judged once
    assert gate.tested == 1


def test_a_check_that_raises_on_real_plans_is_refused(env):
    path, p, cons, ref = env
    gate = CheckGate(p, "trip_planning", path / "db" / "sandbox.duckdb")
    stars = sorted({r["stars"] for r in p.rows["hotel"].values()})
    assert len(stars) > 1, stars
    # it holds (without raising) for the highest-starred hotels only: any other raises
    bad = _check(p, f'unit["hotel"]["stars"] >= {stars[-1]} or 1 // (unit["hotel"]["stars"] - unit["hotel"]["stars"]) > 0')
    why = gate(cons + [bad], [bad], ref, 2)
    assert why and why.startswith("it raises on the plan") and "ZeroDivisionError" in why, why
    assert gate.stats()["checks_rejected"] == 1 and "ZeroDivisionError" in gate.stats()["check_reasons"][0]


def test_a_check_no_answer_breaks_is_refused(env):
    path, p, cons, ref = env
    gate = CheckGate(p, "trip_planning", path / "db" / "sandbox.duckdb")
    vacuous = _check(p, 'all(u["hotel"]["stars"] >= 0 for u in units)', scope="plan")
    why = gate(cons + [vacuous], [vacuous], ref, 1)
    assert why == "no mutant breaks it: the harness cannot show that it rejects anything", why


def test_a_shipped_verifier_never_raises(env, tmp_path):
    path, p, cons, ref = env
    boom = Constraint("check", "boom", {"scope": "plan", "expr": "1 // (len(units) - len(units)) > 0",
                                        "text": "a rule that divides by zero"})
    v = tmp_path / "v.py"
    v.write_text(render_verifier("t-L1", "trip_planning", 1, p, cons + [boom]), encoding="utf-8")
    out = load_verifier(v).verify(p.plan_dict(ref), str(path / "db" / "sandbox.duckdb"))
    assert out["score"] == 0.0
    failed = [c for c in out["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["boom"] and "ZeroDivisionError" in failed[0]["reason"]
