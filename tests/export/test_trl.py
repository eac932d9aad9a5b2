"""TRL export: the dataset read back with pyarrow, the environment class as GRPOTrainer's
environment_factory would use it (public methods = tools, reset(**row)), the reward."""

from __future__ import annotations

import importlib.util
import inspect
import json
import typing

import pyarrow.parquet as pq

from .conftest import all_tasks, as_response, mutant


def _env_module(out):
    spec = importlib.util.spec_from_file_location("_trl_env_test", out / "envfactory_trl_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dataset_columns(exports, bundle):
    out = exports["trl"]
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    rows = pq.read_table(out / "train.parquet").to_pylist() + pq.read_table(out / "test.parquet").to_pylist()
    assert sorted(r["task_id"] for r in rows) == sorted(tasks)
    for r in rows:
        t = tasks[r["task_id"]]
        assert r["prompt"] == [{"role": m["role"], "content": m["content"]} for m in t["messages"]]
        assert (r["env_id"], r["level"], r["tools"]) == (t["env_id"], t["level"], t["tools"])
        assert json.loads(r["reference_answer"]) == t["reference_answer"]
    train_envs = {r["env_id"] for r in pq.read_table(out / "train.parquet").to_pylist()}
    test_envs = {r["env_id"] for r in pq.read_table(out / "test.parquet").to_pylist()}
    assert train_envs and test_envs and not train_envs & test_envs


def test_environment_class_tools_and_reward(exports, bundle):
    out = exports["trl"]
    mod = _env_module(out)
    schemas = {}
    for p in (out / "envs").glob("*/tools/tool_schemas.json"):
        for s in json.loads(p.read_text()):
            schemas[s["function"]["name"]] = s["function"]
    public = {n for n, _ in inspect.getmembers(mod.EnvfactoryEnv, inspect.isfunction) if not n.startswith("_")}
    assert public == set(schemas) | {"reset"}
    for name, fn in schemas.items():  # the signature TRL derives its schema from matches ours
        method = getattr(mod.EnvfactoryEnv, name)
        params = list(inspect.signature(method).parameters)[1:]
        assert params == list(fn["parameters"]["properties"])
        hints = typing.get_type_hints(method)
        assert all(hints[p] is str for p in params) and hints["return"] is str
        assert method.__doc__.startswith(fn["description"])
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    rows = pq.read_table(out / "train.parquet").to_pylist()
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    envs, completions, bad = [], [], []
    for row in rows:
        env = mod.EnvfactoryEnv()
        assert env.reset(**row) is None
        t = tasks[row["task_id"]]
        for c in t["reference_tool_calls"]:
            text = getattr(env, c["name"])(**c["arguments"])
            assert len(text) <= limit and json.loads(text)["results"]
        envs.append(env)
        completions.append([{"role": "assistant", "content": "", "tool_calls": []},
                            {"role": "tool", "content": "{\"results\": []}"},
                            {"role": "assistant", "content": as_response(t["reference_answer"])}])
        bad.append([{"role": "assistant", "content": json.dumps(mutant(t["reference_answer"]))}])
    assert mod.envfactory_reward(completions, environments=envs, task_id=[r["task_id"] for r in rows]) == [1.0] * len(rows)
    assert mod.envfactory_reward(bad, environments=envs) == [0.0] * len(rows)
    assert envs[0]._episode.state()["tool_calls"] == len(tasks[rows[0]["task_id"]]["reference_tool_calls"])
    other = mod.EnvfactoryEnv()
    other.reset(**rows[0])
    assert other._episode.state()["tool_calls"] == 0  # one instance per rollout, state not shared
    hidden = sorted(set(schemas) - set(rows[0]["tools"]))
    assert hidden and "unknown tool" in json.loads(getattr(other, hidden[0])(**{
        k: "x" for k in schemas[hidden[0]]["parameters"]["properties"]}))["error"]


def test_generated_methods_keep_enums_and_types(tmp_path):
    from envfactory.factory.export.trl import render_env_module

    schema = {"type": "function", "function": {"name": "find_rooms", "description": "Find rooms.", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["kind", "beds", "max_price", "pets"],
        "properties": {"kind": {"type": "string", "enum": ["suite", "double"], "description": "Room kind."},
                       "beds": {"type": "integer", "description": "Beds."},
                       "max_price": {"type": "number", "description": "Price cap."},
                       "pets": {"type": "boolean", "description": "Pets allowed."}}}}}
    (tmp_path / "envfactory_trl_env.py").write_text(render_env_module([schema]))
    mod = _env_module(tmp_path)
    hints = typing.get_type_hints(mod.EnvfactoryEnv.find_rooms)
    assert hints == {"kind": typing.Literal["suite", "double"], "beds": int, "max_price": float, "pets": bool,
                     "return": str}
    assert "kind: Room kind." in mod.EnvfactoryEnv.find_rooms.__doc__
    assert json.loads(mod.EnvfactoryEnv().find_rooms("suite", 2, 80.0, True)) == {"error": "environment not reset"}
