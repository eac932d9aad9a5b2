"""OpenEnv export: the manifest YAML, and the environment's reset/step/state protocol with
the terminal reward from the verifier."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from .conftest import all_tasks, mutant


def _core(out):
    spec = importlib.util.spec_from_file_location("_openenv_test", out / "envfactory_openenv.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_openenv_package_files(exports):
    out = exports["openenv"]
    spec = yaml.safe_load((out / "openenv.yaml").read_text())
    assert spec == {"spec_version": 1, "name": "envfactory_trip_planning", "type": "space", "runtime": "fastapi",
                    "app": "server.app:app", "port": 8000}
    assert (out / "server" / "app.py").is_file() and "HEALTHCHECK" in (out / "server" / "Dockerfile").read_text()


def test_reset_step_submit(exports, bundle):
    out = exports["openenv"]
    mod = _core(out)
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    for t in all_tasks(bundle)[:4] + all_tasks(bundle)[-2:]:
        for answer, reward in ((t["reference_answer"], 1.0), (mutant(t["reference_answer"]), 0.0)):
            env = mod.EnvfactoryCore()
            obs = env.reset(task_id=t["task_id"])
            assert obs["prompt"] == t["prompt"] and [s["function"]["name"] for s in obs["tools"]] == t["tools"]
            assert obs["done"] is False and obs["reward"] == 0.0
            listed = env.step({"type": "list_tools"})
            assert [s["function"]["name"] for s in listed["tools"]] == t["tools"]
            for c in t["reference_tool_calls"]:
                o = env.step({"type": "call_tool", "tool_name": c["name"], "arguments": c["arguments"]})
                assert o["done"] is False and len(o["result"]) <= limit and json.loads(o["result"])["results"]
            final = env.step({"type": "submit", "answer": json.dumps(answer)})
            assert final["done"] is True and final["reward"] == reward
            assert env.state["step_count"] == len(t["reference_tool_calls"]) + 2 and env.state["score"] == reward
            assert env.step({"type": "call_tool", "tool_name": "list_cities"})["error"].startswith("episode is over")
    env = mod.EnvfactoryCore()
    ids = sorted(t["task_id"] for t in all_tasks(bundle))
    assert env.reset(seed=5)["task_id"] == ids[5 % len(ids)]
    assert "unknown action" in env.step({"type": "dance"})["error"]


def test_openenv_app_when_installed(exports, monkeypatch):
    pytest.importorskip("openenv.core.env_server.http_server")
    from fastapi.testclient import TestClient

    out = exports["openenv"]
    monkeypatch.syspath_prepend(str(out))
    app = _core(out).build_app()
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        obs = client.post("/reset", json={"seed": 0}).json()
        assert obs["done"] is False
