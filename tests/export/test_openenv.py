"""OpenEnv export: the package files each OpenEnv version's `openenv validate` reads, the
requirements covering every import, and the environment core's reset/step/state protocol
(episodes kept by id, as plain HTTP needs) with the terminal reward from the verifier.
The server itself, under openenv-core 0.3 and openenv 0.10, is tests/trainers/test_openenv.py."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import tomllib

import pytest
import yaml

from .conftest import all_tasks, mutant


def _core(out):
    spec = importlib.util.spec_from_file_location("_openenv_test", out / "envfactory_openenv.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_openenv_package_files(exports, bundle):
    out = exports["openenv"]
    spec = yaml.safe_load((out / "openenv.yaml").read_text())
    validation = spec.pop("validation")
    assert spec == {"spec_version": 1, "name": "envfactory_trip_planning", "type": "space", "runtime": "fastapi",
                    "app": "server.app:app", "port": 8000}
    # openenv 0.10's manifest: every key it requires, the reward contract the verifiers keep
    assert set(validation) == {"reward", "resources", "network", "capabilities", "types"}
    assert validation["reward"] == {"range": [0.0, 1.0], "oracle_tolerance": 0.0, "floor_margin": 1.0}
    assert set(validation["resources"]) == {"cpu", "memory_mb", "disk_mb", "episode_timeout_s"}
    assert validation["capabilities"]["verifier"] == {"kind": "reward_channel"}
    tasks = all_tasks(bundle)
    assert sum(validation["capabilities"]["declared_task_count"].values()) == len(tasks)
    assert validation["capabilities"]["declared_tools"] == sorted({n for t in tasks for n in t["tools"]})
    assert "execution" not in validation  # a runtime plan would make validate build a Docker image
    # openenv-core 0.3's validate: pyproject with a `server` script and an openenv dependency
    pyproject = tomllib.loads((out / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"server": "server.app:main"}
    assert pyproject["project"]["dependencies"] == [l for l in (out / "server" / "requirements.txt").read_text()
                                                    .splitlines() if l and not l.startswith("#")]
    assert not (out / "uv.lock").exists() and "run `uv lock` here" in (out / "README.md").read_text()
    dockerfile = (out / "server" / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and '"--host", "0.0.0.0"' in dockerfile


def test_server_main_defaults_to_loopback(exports):
    """server/app.py: main() under a __main__ guard (0.3's validate looks for both), --host 127.0.0.1."""
    tree = ast.parse((exports["openenv"] / "server" / "app.py").read_text())
    guard = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert guard and ast.unparse(guard[0].body[0]) == "main()"
    calls = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    host = [c for c in calls if c.startswith("ap.add_argument('--host'")]
    assert len(host) == 1 and "'ENVFACTORY_OPENENV_HOST', '127.0.0.1'" in host[0]


def _top_imports(path) -> set[str]:
    mods = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            mods |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0:
            mods.add(n.module.split(".")[0])
    return mods


def test_requirements_cover_every_import(exports):
    out = exports["openenv"]
    mods = set().union(*(_top_imports(p) for p in out.rglob("*.py")))
    third_party = mods - set(sys.stdlib_module_names) - {"envfactory_openenv", "__future__"}
    reqs = {l.split(">")[0].split("=")[0].split("<")[0] for l in (out / "server" / "requirements.txt").read_text()
            .splitlines() if l and not l.startswith("#")}
    # fastapi and pydantic are dependencies of openenv (both versions) and used only beside it
    assert third_party - {"fastapi", "pydantic"} <= reqs and "openenv" in reqs, (third_party, reqs)
    assert "duckdb" in third_party and "duckdb" in reqs


def test_reset_step_submit(exports, bundle):
    out = exports["openenv"]
    mod = _core(out)
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    for t in all_tasks(bundle)[:4] + all_tasks(bundle)[-2:]:
        for answer, reward in ((t["reference_answer"], 1.0), (mutant(t["reference_answer"]), 0.0)):
            env = mod.EnvfactoryCore()
            obs = env.reset(task_id=t["task_id"])
            assert obs["prompt"] == t["prompt"] and obs["messages"] == t["messages"]
            assert [s["function"]["name"] for s in obs["tools"]] == t["tools"]
            assert obs["done"] is False and obs["reward"] == 0.0 and obs["step"] == 0
            listed = env.step({"type": "list_tools"})
            assert [s["function"]["name"] for s in listed["tools"]] == t["tools"]
            for c in t["reference_tool_calls"]:
                o = env.step({"type": "call_tool", "tool_name": c["name"], "arguments": c["arguments"]})
                assert o["done"] is False and len(o["result"]) <= limit and json.loads(o["result"])["results"]
            final = env.step({"type": "submit", "answer": json.dumps(answer)})
            assert final["done"] is True and final["reward"] == reward
            assert all(c["passed"] for c in final["checks"]) is (reward == 1.0)
            assert env.state["step_count"] == len(t["reference_tool_calls"]) + 2 and env.state["score"] == reward
            assert env.step({"type": "call_tool", "tool_name": "list_cities"})["error"].startswith("episode is over")
    env = mod.EnvfactoryCore()
    ids = sorted(t["task_id"] for t in all_tasks(bundle))
    assert env.reset(seed=5)["task_id"] == ids[5 % len(ids)]
    assert "unknown action" in env.step({"type": "dance"})["error"]


def test_episode_found_by_id_across_core_objects(exports, bundle):
    """Plain HTTP builds a new environment per request: a fresh core continues the episode by id."""
    mod = _core(exports["openenv"])
    t = all_tasks(bundle)[-1]
    eid = mod.EnvfactoryCore().reset(task_id=t["task_id"])["episode_id"]
    other = mod.EnvfactoryCore().reset(task_id=all_tasks(bundle)[0]["task_id"])["episode_id"]
    for i, c in enumerate(t["reference_tool_calls"], 1):
        o = mod.EnvfactoryCore().step({"type": "call_tool", "tool_name": c["name"], "arguments": c["arguments"]}, eid)
        assert o["episode_id"] == eid and o["step"] == i and json.loads(o["result"])["results"]
    final = mod.EnvfactoryCore().step({"type": "submit", "answer": json.dumps(t["reference_answer"])}, eid)
    assert final["reward"] == 1.0 and final["done"] is True
    assert mod.EnvfactoryCore().step({"type": "list_tools"}, other)["step"] == 1  # untouched by the first
    assert "unknown episode_id" in mod.EnvfactoryCore().step({"type": "list_tools"}, "nope")["error"]
    assert "reset first" in mod.EnvfactoryCore().step({"type": "list_tools"})["error"]


@pytest.mark.parametrize("kwargs", [{"task_id": "no-such-task"}, {"task_id": 7}, {"task_id": ["x"]}, {"seed": -1},
                                    {"seed": "3"}, {"seed": True}, {"episode_id": ""}, {"episode_id": 5}])
def test_bad_reset_is_an_error_observation(exports, bundle, kwargs):
    """The core never raises on a bad reset; it ends any earlier episode's hold and a submit scores 0
    (the app turns the error into HTTP 422: tests/trainers/test_openenv.py)."""
    mod = _core(exports["openenv"])
    core = mod.EnvfactoryCore()
    core.reset(task_id=all_tasks(bundle)[0]["task_id"])
    obs = core.reset(**kwargs)
    assert obs["done"] is True and obs["episode_id"] is None and obs["error"], obs
    assert ("unknown task_id" in obs["error"]) is ("task_id" in kwargs)
    final = core.step({"type": "submit", "answer": json.dumps(all_tasks(bundle)[0]["reference_answer"])})
    assert final["reward"] == 0.0 and "reset first" in final["error"]
