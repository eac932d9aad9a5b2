"""`factory solve`: agents that solve tasks through the environment's own tool runtime, scored
by each task's verifier, reported as pass@1 / pass@k per level."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from envfactory.factory.solve import pass_at, solve_bundle
from tests.factory.scripted_server import ScriptedServer, completion, tool_call


def _factory(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("solve") / "trip"
    r = _factory("generate", "trip_planning", "--envs", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_pass_at_k_estimator():
    assert pass_at(4, 0, 1) == 0.0 and pass_at(4, 4, 1) == 1.0 and pass_at(4, 1, 1) == 0.25
    assert pass_at(4, 1, 4) == 1.0 and pass_at(5, 1, 2) == pytest.approx(1 - 6 / 10)


def test_baselines_report_per_level_and_record_it(bundle):
    r = _factory("solve", str(bundle), "--agent", "random,greedy", "-k", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.strip().splitlines()
    assert head.split()[:3] == ["level", "tasks", "min"] and "greedy" in head and "random" in head
    assert [row.split()[0] for row in rows] == [str(i) for i in range(6)]
    greedy = json.loads((bundle / "solve-greedy.json").read_text())
    random_ = json.loads((bundle / "solve-random.json").read_text())
    assert greedy["k"] == 2 and set(greedy["levels"]) == {str(i) for i in range(6)}
    # greedy, cheapest first with repair, solves every level-0 task; random structure alone rarely does
    assert greedy["levels"]["0"]["pass@1"] == 1.0
    assert sum(v["pass@1"] for v in random_["levels"].values()) < sum(v["pass@1"] for v in greedy["levels"].values())
    for t in greedy["tasks"]:
        assert len(t["scores"]) == 2 and all(s in (0.0, 1.0) for s in t["scores"])
        assert all(c >= t["min_tool_calls"] for c in t["tool_calls"])  # every fact came through the tools
    batch = json.loads((bundle / "batch.json").read_text())
    assert batch["solve"]["greedy"]["levels"] == greedy["levels"] and "random" in batch["solve"]


def test_greedy_answers_pass_the_verifier_and_a_broken_explorer_fails(bundle, monkeypatch):
    """The scores are the verifiers': with the explorer's row merging broken (rows lose the
    filter values their search was called with), no plan keeps its links and all fail."""
    good = solve_bundle(bundle, "greedy", 1, workers=1, max_tasks=2, write=False)
    assert good.levels[0]["pass@1"] == 1.0
    from envfactory.factory.agents import solvers

    def forgetful(self, name, args):
        return solvers.Explorer._orig_call(self, name, {})  # every search called without its filter

    monkeypatch.setattr(solvers.Explorer, "_orig_call", solvers.Explorer._call, raising=False)
    monkeypatch.setattr(solvers.Explorer, "_call", forgetful)
    from envfactory.factory.solve import _solve_env

    rows = _solve_env(str(sorted(p for p in bundle.iterdir() if p.is_dir())[0]), "greedy", None, 1, 0, 2)
    assert all(s == 0.0 for r in rows for s in r["scores"])


def test_a_model_solver_through_the_chat_runtime(bundle):
    """The openai solver runs the task's own messages and tools: a scripted model that looks
    the cities up and answers with the reference scores 1; one that answers junk scores 0."""
    env = sorted(p for p in bundle.iterdir() if p.is_dir())[0]
    tasks = {json.loads(x)["prompt"]: json.loads(x) for x in (env / "tasks" / "tasks.jsonl").read_text().splitlines()}

    def script(body, n):
        msgs = body["messages"]
        task = tasks[next(m["content"] for m in msgs if m["role"] == "user")]
        if not any(m["role"] == "tool" for m in msgs):
            assert {t["function"]["name"] for t in body["tools"]} == set(task["tools"])
            return completion(None, [tool_call("list_cities", {}, "c1")], reasoning="look up the cities first")
        cities = json.loads(next(m["content"] for m in msgs if m["role"] == "tool"))
        assert cities["results"]  # the real tool ran on the environment's sandbox
        return completion(json.dumps(task["reference_answer"]))

    with ScriptedServer(script) as srv:
        rep = solve_bundle(env, "openai", 1, workers=1, spec=_spec(srv), write=False)
    assert all(v["pass@1"] == 1.0 for v in rep.levels.values()) and len(rep.levels) == 6
    assert all(t["tool_calls"] == [1] and t["tokens"][0] == 30 for t in rep.tasks)
    with ScriptedServer(lambda body, n: completion("I think you should visit Paris.")) as srv:
        rep = solve_bundle(env, "openai", 1, workers=1, spec=_spec(srv), write=False)
    assert all(v["pass@1"] == 0.0 for v in rep.levels.values())


def _spec(srv):
    from envfactory.factory.agents.base import AgentSpec

    return AgentSpec("openai", "scripted", srv.base_url)


def test_solve_rejects_bad_input(tmp_path):
    r = _factory("solve", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    r = _factory("solve", str(tmp_path), "--agent", "oracle")
    assert r.returncode == 2 and "unknown solving agent 'oracle'" in r.stderr
    r = _factory("solve", str(tmp_path))
    assert r.returncode == 2 and "no environments" in r.stderr


def test_validate_reports_the_baselines_when_asked(bundle):
    r = _factory("validate", str(bundle), "--solve", "greedy", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "greedy pass@1" in r.stdout and "validation: ok" in r.stdout
    report = json.loads((bundle / "validation.json").read_text())
    assert report["solve"]["greedy"]["levels"]["0"]["pass@1"] == 1.0
    r = _factory("validate", str(bundle), "--solve", "openai")
    assert r.returncode == 2 and "no-model baselines" in r.stderr
