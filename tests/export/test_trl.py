"""TRL export, in process: the dataset read back with pyarrow, the environment classes as
GRPOTrainer's environment_factory uses them (public methods = tools, one class per task tool
set, reset(**row)), the reward on reference and junk completions, the settings and
requirements files. tests/trainers/test_trl.py runs TRL itself on the same export."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import typing

import pyarrow.parquet as pq
import pytest

from envfactory.factory.export.common import copy_runtime
from envfactory.factory.export.lengths import HEADROOM, ROUND_TO
from envfactory.factory.export.trl import TURN_TEMPLATE_BYTES, render_env_module

from tests.conftest import export_schemas

from .conftest import all_tasks, as_response, mutant


def _env_module(path):
    spec = importlib.util.spec_from_file_location(f"_trl_env_test_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(out):
    return pq.read_table(out / "train.parquet").to_pylist() + pq.read_table(out / "test.parquet").to_pylist()


def _public(cls):
    return {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


_schemas = export_schemas


class Msg:  # a pydantic-like message: attributes only
    def __init__(self, role, content):
        self.role, self.content = role, content


def test_dataset_columns(exports, bundle):
    out = exports["trl"]
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    rows = _rows(out)
    assert sorted(r["task_id"] for r in rows) == sorted(tasks)
    for r in rows:
        t = tasks[r["task_id"]]
        assert r["prompt"] == [{"role": m["role"], "content": m["content"]} for m in t["messages"]]
        assert (r["env_id"], r["level"], r["tools"]) == (t["env_id"], t["level"], t["tools"])
        assert r["environment"] == "+".join(sorted(t["tools"]))
        assert json.loads(r["reference_answer"]) == t["reference_answer"]
    train_envs = {r["env_id"] for r in pq.read_table(out / "train.parquet").to_pylist()}
    test_envs = {r["env_id"] for r in pq.read_table(out / "test.parquet").to_pylist()}
    assert train_envs and test_envs and not train_envs & test_envs


def test_one_class_per_task_tool_set_with_exactly_those_tools(exports, bundle):
    out = exports["trl"]
    mod = _env_module(out / "envfactory_trl_env.py")
    schemas = _schemas(out)
    assert _public(mod.EnvfactoryEnv) == set(schemas) | {"reset"}
    assert set(mod.ENVIRONMENTS) == {r["environment"] for r in _rows(out)}
    assert len(mod.ENVIRONMENTS) >= 2  # the levels use different tool sets
    for key, cls in mod.ENVIRONMENTS.items():
        assert _public(cls) == set(key.split("+")) | {"reset"}
    for name, fn in schemas.items():  # the signature TRL derives its schema from matches ours
        method = getattr(mod.EnvfactoryEnv, name)
        params = list(inspect.signature(method).parameters)[1:]
        assert params == list(fn["parameters"]["properties"])
        hints = typing.get_type_hints(method)
        assert all(hints[p] is str for p in params) and hints["return"] is str
        assert method.__doc__.startswith(fn["description"])
    row = max(_rows(out), key=lambda r: len(r["tools"]))
    narrow = next(c for k, c in mod.ENVIRONMENTS.items() if not set(row["tools"]) <= set(k.split("+")))
    with pytest.raises(ValueError, match="does not offer"):  # a row routed to the wrong class says so
        narrow().reset(**row)


def test_tools_answer_data_and_the_reward_scores_exactly(exports, bundle):
    out = exports["trl"]
    mod = _env_module(out / "envfactory_trl_env.py")
    schemas = _schemas(out)
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    rows = pq.read_table(out / "train.parquet").to_pylist()
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    envs, good, bad = [], [], []
    for row in rows:
        env = mod.ENVIRONMENTS[row["environment"]]()
        assert env.reset(**row) is None
        t = tasks[row["task_id"]]
        for c in t["reference_tool_calls"]:
            text = getattr(env, c["name"])(**c["arguments"])
            assert len(text) <= limit and json.loads(text)["results"]
        envs.append(env)
        answer = as_response(t["reference_answer"])
        good.append([{"role": "assistant", "content": "", "tool_calls": []},
                     {"role": "tool", "content": "{\"results\": []}"},
                     {"role": "assistant", "content": answer}])
        bad.append([{"role": "assistant", "content": json.dumps(mutant(t["reference_answer"]))}])
    ids = [r["task_id"] for r in rows]
    logged, metrics = {}, {}
    assert mod.envfactory_reward(good, environments=envs, task_id=ids, log_extra=logged.__setitem__,
                                 log_metric=metrics.__setitem__) == [1.0] * len(rows)
    assert logged["envfactory_reason"] == ["all checks passed"] * len(rows)
    assert metrics == {"envfactory/tool_error_rate": 0.0}
    assert envs[0].last_result["score"] == 1.0
    assert mod.envfactory_reward(bad, environments=envs) == [0.0] * len(rows)
    assert envs[0]._episode.state()["tool_calls"] == len(tasks[rows[0]["task_id"]]["reference_tool_calls"])
    other = mod.EnvfactoryEnv()
    other.reset(**rows[0])
    assert other._episode.state()["tool_calls"] == 0  # one instance per rollout, state not shared
    other.reset(**rows[0])  # a pooled instance reset again starts a fresh episode
    hidden = sorted(set(schemas) - set(rows[0]["tools"]))
    assert hidden and "unknown tool" in json.loads(getattr(other, hidden[0])(**{
        k: "x" for k in schemas[hidden[0]]["parameters"]["properties"]}))["error"]
    mod.envfactory_reward(bad[:1], environments=[other], log_metric=metrics.__setitem__)
    assert metrics["envfactory/tool_error_rate"] == 1.0  # the error reached the metric


def test_reward_never_raises_and_reads_every_message_shape(exports, bundle):
    mod = _env_module(exports["trl"] / "envfactory_trl_env.py")
    t = all_tasks(bundle)[0]
    answer = json.dumps(t["reference_answer"])
    parts = [{"type": "text", "text": answer}]
    shapes = [answer, [Msg("assistant", answer)], [{"role": "assistant", "content": parts}],
              [Msg("assistant", [{"type": "text", "text": answer}])], {"role": "assistant", "content": answer}]
    assert mod.envfactory_reward(shapes, task_id=[t["task_id"]] * len(shapes)) == [1.0] * len(shapes)

    class Hostile:
        @property
        def role(self):
            raise RuntimeError("no")

    wrong = json.dumps(mutant(t["reference_answer"]))
    junk = [None, 42, b"\xff", "", [], [Msg("user", answer)], [Msg("assistant", wrong)],
            [Hostile()], [{"role": "assistant", "content": "[" * 100000}], [{"role": "assistant", "content": {"x": 1}}]]
    assert mod.envfactory_reward(junk, task_id=[t["task_id"]] * len(junk)) == [0.0] * len(junk)
    assert mod.envfactory_reward([answer], task_id=["no-such-task"]) == [0.0]
    assert mod.envfactory_reward([answer]) == [0.0]  # no task at all
    assert mod.envfactory_reward(None) == []


def test_missing_duckdb_fails_at_construction(exports, monkeypatch):
    mod = _env_module(exports["trl"] / "envfactory_trl_env.py")
    monkeypatch.setitem(sys.modules, "duckdb", None)  # `import duckdb` now raises ImportError
    for cls in [mod.EnvfactoryEnv, *mod.ENVIRONMENTS.values()]:
        with pytest.raises(ImportError, match="requirements.txt"):
            cls()


def test_settings_cover_the_reference_episodes(exports, bundle):
    out = exports["trl"]
    settings = json.loads((out / "trl_config.json").read_text())
    assert set(settings) == {"max_completion_length", "max_tool_calling_iterations", "remove_unused_columns"}
    assert settings["remove_unused_columns"] is False
    mod = _env_module(out / "envfactory_trl_env.py")
    tasks = all_tasks(bundle)
    longest = 0
    for t in tasks:  # the episode's bytes, recomputed here through the environment class
        env = mod.EnvfactoryEnv()
        env.reset(task_id=t["task_id"])
        size = sum(len(json.dumps({"name": c["name"], "arguments": c["arguments"]}, ensure_ascii=False).encode())
                   + len(getattr(env, c["name"])(**c["arguments"]).encode()) + TURN_TEMPLATE_BYTES
                   for c in t["reference_tool_calls"])
        longest = max(longest, size + len(json.dumps(t["reference_answer"], ensure_ascii=False).encode())
                      + TURN_TEMPLATE_BYTES)
    assert settings["max_completion_length"] >= longest * HEADROOM > 512
    assert settings["max_completion_length"] % ROUND_TO == 0 and settings["max_completion_length"] < longest * 2
    assert settings["max_tool_calling_iterations"] == 2 * max(len(t["reference_tool_calls"]) for t in tasks)
    readme = (out / "README.md").read_text()
    assert 'json.loads((EXPORT / "trl_config.json").read_text())' in readme and "**settings" in readme
    assert f"max_completion_length: {settings['max_completion_length']}" in readme


def test_requirements_name_every_runtime_import(exports):
    out = exports["trl"]
    lines = [l.split("#")[0].strip() for l in (out / "requirements.txt").read_text().splitlines()]
    lines = [l for l in lines if l]
    import duckdb

    floor = next(l for l in lines if l.startswith("duckdb>="))
    major, minor = map(int, floor.split(">=")[1].split("."))
    assert tuple(map(int, duckdb.__version__.split(".")[:2])) >= (major, minor)  # the writer's own version
    assert (major, minor) >= (2, 0)  # these sandboxes were written by DuckDB 2.x; 1.5 cannot open them
    assert any(l.startswith("trl>=1.16") for l in lines) and any(l.startswith("transformers>=") for l in lines)
    imported = set()
    for p in [out / "envfactory_trl_env.py", out / "envfactory_runtime.py", *out.glob("envs/*/tools/tools.py"),
              *out.glob("envs/*/verifiers/*.py")]:
        for line in p.read_text().splitlines():
            if line.startswith(("import ", "from ")) and not line.startswith("from __future__"):
                imported.add(line.split()[1].split(".")[0])
        # imports inside functions (the duckdb probe) count too
        imported |= {l.split()[1].split(".")[0] for l in p.read_text().splitlines()
                     if l.strip().startswith("import ") and l.startswith(" ")}
    third_party = {m for m in imported if m not in sys.stdlib_module_names}
    assert third_party == {"duckdb"}
    readme = (out / "README.md").read_text()
    assert "pip install -r requirements.txt" in readme and "transformers >= 5.2" in readme


def test_generated_methods_keep_enums_types_and_optional_arguments(tmp_path):
    schema = {"type": "function", "function": {"name": "find_rooms", "description": 'Find rooms """ now.',
                                               "parameters": {
        "type": "object", "additionalProperties": False, "required": ["kind", "beds", "max_price", "pets"],
        "properties": {"kind": {"type": "string", "enum": ["suite", "double"], "description": "Room kind."},
                       "beds": {"type": "integer", "description": "Beds."},
                       "max_price": {"type": "number", "description": "Price cap."},
                       "pets": {"type": "boolean", "description": "Pets allowed."},
                       "floor": {"type": "integer", "description": "Floor,\n  if any."}}}}}
    tasks = [{"task_id": "t1", "tools": ["find_rooms"]}]
    copy_runtime(tmp_path)  # the classes load the runtime when constructed
    mod = _env_module(render_env_module(tmp_path / "envfactory_trl_env.py", [schema], tasks))
    hints = typing.get_type_hints(mod.EnvfactoryEnv.find_rooms)
    assert hints == {"kind": typing.Literal["suite", "double"], "beds": int, "max_price": float, "pets": bool,
                     "floor": typing.Optional[int], "return": str}
    assert inspect.signature(mod.EnvfactoryEnv.find_rooms).parameters["floor"].default is None
    doc = mod.EnvfactoryEnv.find_rooms.__doc__
    assert "kind: Room kind." in doc and "floor: Floor, if any." in doc and doc.startswith('Find rooms """ now.')
    assert list(mod.ENVIRONMENTS) == ["find_rooms"] and _public(mod.ENVIRONMENTS["find_rooms"]) == {"find_rooms",
                                                                                                     "reset"}
    assert json.loads(mod.EnvfactoryEnv().find_rooms("suite", 2, 80.0, True)) == {"error": "environment not reset"}


def test_tool_names_trl_would_hide_or_confuse_are_refused(tmp_path):
    from envfactory.factory.errors import UsageError

    for bad in ("reset", "_private", "get_reward", "class"):
        schema = {"type": "function", "function": {"name": bad, "description": "x",
                                                   "parameters": {"type": "object", "properties": {}}}}
        with pytest.raises(UsageError):
            render_env_module(tmp_path / "m.py", [schema])
