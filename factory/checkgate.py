"""The gate a model-written check passes before the ladder accepts a task with it.

A `check` constraint (`verifiers.constraints.custom`) is an expression a model wrote. Its
move has already been counted (the solver can count plans with it) when the ladder asks
here; the gate then runs the validation harness on the candidate task, in this process,
against this environment's sandbox:
  - the check never raises: on every case answer and on random plans of real rows;
  - the task's verifier, rendered as it would be shipped, scores every case as the oracle
    labels it (`verifiers.mutants.cases`): the reference passes, every mutant and junk
    answer fails, the other feasible plans pass, and it never raises;
  - some mutant breaks the new check (a check no answer can be shown to break is one the
    harness cannot vouch for).
A refusal's reason goes to the agent, and the gate counts what it tested and refused for the
run's report. `factory validate` runs the same harness again on the finished bundle, in the
sandbox.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from envfactory.verifiers.constraints import Constraint, get_kind
from envfactory.verifiers.problem import Plan, Problem

__all__ = ["CheckGate"]

RANDOM_PLANS = 200


class CheckGate:
    def __init__(self, p: Problem, seed_name: str, db: Path):
        self.p, self.seed_name, self.db = p, seed_name, Path(db)
        self.tested = 0
        self.rejected: list[str] = []
        self._seen: dict[str, str | None] = {}

    def stats(self) -> dict:
        return {"checks_tested": self.tested, "checks_rejected": len(self.rejected),
                "check_reasons": self.rejected[:5]}

    def __call__(self, constraints: list[Constraint], new: list[Constraint], reference: Plan, level: int) -> str | None:
        """None if the task with its new checks passes the harness, else the reason."""
        key = json.dumps([[c.to_json() for c in constraints], [c.to_json() for c in new]], sort_keys=True, default=str)
        if key not in self._seen:  # the same task proposed again gets the same verdict, once computed
            self.tested += 1
            why = self._seen[key] = self._why(constraints, new, reference, level)
            if why:
                self.rejected.append(f"{', '.join(c.name for c in new)}: {why}")
        return self._seen[key]

    def _why(self, constraints, new, reference, level) -> str | None:
        from envfactory.verifiers.codegen import load_verifier, render_verifier
        from envfactory.verifiers.mutants import cases, plan_of, random_plan

        p = self.p
        rng = random.Random(f"gate:{level}:{[c.to_json() for c in new]}")
        ctx = p.ctx()
        def raises(plans) -> str | None:
            real = [pl for pl in plans if pl is not None and all(isinstance(e, str) and e in p.rows[s.name]
                                                                  for unit in pl for s, e in zip(p.slots, unit))]
            for c in new:
                fn = get_kind(c.kind).check
                for pl in real:
                    try:
                        fn(p.plan_rows(pl), c.params, ctx)
                    except Exception as e:  # noqa: BLE001 - a model's check must not end the run
                        return f"it raises on the plan {p.plan_dict(pl)}: {type(e).__name__}: {str(e)[:200]}"
            return None

        why = raises([reference] + [random_plan(p, rng) for _ in range(RANDOM_PLANS)])
        if why:
            return why
        try:
            cc = cases(p, constraints, p.plan_dict(reference), rng, p.origin_id)
        except Exception as e:  # noqa: BLE001
            return f"the harness cannot build its cases: {type(e).__name__}: {str(e)[:200]}"
        why = raises([plan_of(p, c.answer) for c in cc])
        if why:
            return why
        bad = [c for c in cc if c.disagree]
        if bad:
            return f"the oracle's two encodings disagree on {bad[0].name}: {bad[0].note}"
        with tempfile.TemporaryDirectory(prefix="envfactory-gate-") as tmp:
            path = Path(tmp) / "verifier.py"
            path.write_text(render_verifier(f"gate-L{level}", self.seed_name, level, p, constraints), encoding="utf-8")
            try:
                verifier = load_verifier(path)
            except Exception as e:  # noqa: BLE001
                return f"its verifier does not load: {type(e).__name__}: {e}"
            for case in cc:
                try:
                    score = verifier.verify(case.answer, str(self.db))["score"]
                except Exception as e:  # noqa: BLE001
                    return f"the verifier raises on {case.name}: {type(e).__name__}: {e}"
                if score != case.expect:
                    what = "rejects the reference" if case.group == "reference" else (
                        f"accepts the wrong answer {case.name}" if case.expect == 0.0
                        else f"rejects the feasible plan {case.name}")
                    return f"the verifier {what}"
        for c in new:
            if not any(k.target == c.name and k.expect == 0.0 for k in cc):
                return "no mutant breaks it: the harness cannot show that it rejects anything"
        return None
