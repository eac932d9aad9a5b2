"""verl export read back with verl's conventions: parquet columns, the tool YAML validated
by a replica of verl's schema models, the main_ppo config and its length limits, the BaseTool
lifecycle, and compute_score. tests/trainers/test_verl.py runs the same export in verl itself."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from envfactory.factory.errors import UsageError
from envfactory.factory.export.verl import narrow_schema

from .conftest import all_tasks, as_response, env_dirs, mutant


# verl/tools/schemas.py, with extra="forbid" so that anything verl would silently drop fails here
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Prop(_Strict):
    type: str
    description: str | None = None
    enum: list[str] | None = None


class Params(_Strict):
    type: str
    properties: dict[str, Prop]
    required: list[str]


class Function(_Strict):
    name: str
    description: str
    parameters: Params
    strict: bool = False


class ToolSchema(_Strict):
    type: str
    function: Function


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parquet_rows(exports, bundle):
    out = exports["verl"]
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    seen = {}
    for split in ("train", "test"):
        table = pq.read_table(out / f"{split}.parquet")
        assert table.column_names == ["data_source", "agent_name", "prompt", "ability", "reward_model", "extra_info"]
        for i, row in enumerate(table.to_pylist()):
            t = tasks[row["extra_info"]["task_id"]]
            assert row["data_source"] == t["env_id"] and row["agent_name"] == "tool_agent"
            assert row["ability"] == "trip_planning"
            assert row["prompt"] == [{"role": m["role"], "content": m["content"]} for m in t["messages"]]
            assert row["prompt"][-1]["role"] == "user" and row["prompt"][-1]["content"] == t["prompt"]
            assert row["reward_model"]["style"] == "rule"
            gt = json.loads(row["reward_model"]["ground_truth"])
            assert gt == {"task_id": t["task_id"], "reference_answer": t["reference_answer"]}
            info = row["extra_info"]
            assert info["split"] == split and info["index"] == i and info["need_tools_kwargs"] is True
            tk = info["tools_kwargs"]
            assert info["tool_selection"] == t["tools"]  # what verl's ToolAgentLoop shows the model
            assert set(tk) >= set(t["tools"])
            assert all(v == {"create_kwargs": {"task_id": t["task_id"], "env_id": t["env_id"]}} for v in tk.values())
            seen[t["task_id"]] = split
    assert set(seen) == set(tasks)
    by_env = {}
    for tid, split in seen.items():
        by_env.setdefault(tasks[tid]["env_id"], set()).add(split)
    assert all(len(s) == 1 for s in by_env.values()) and {"train", "test"} == set().union(*by_env.values())


def test_tool_config_is_valid_for_verl_and_loses_nothing(exports, bundle):
    out = exports["verl"]
    cfg = yaml.safe_load((out / "tool_config.yaml").read_text())
    schemas = {}
    for env in env_dirs(bundle):
        for s in json.loads((env / "tools" / "tool_schemas.json").read_text()):
            schemas[s["function"]["name"]] = s
    assert sorted(t["tool_schema"]["function"]["name"] for t in cfg["tools"]) == sorted(schemas)
    for tool in cfg["tools"]:
        assert tool["class_name"] == "envfactory_verl_tool.EnvfactoryTool" and tool["config"] == {"type": "native"}
        parsed = ToolSchema.model_validate(tool["tool_schema"])
        src = schemas[parsed.function.name]["function"]
        assert parsed.function.parameters.required == src["parameters"]["required"]
        for name, p in src["parameters"]["properties"].items():
            assert parsed.function.parameters.properties[name].model_dump(exclude_none=True) == p


def test_narrow_schema_refuses_what_verl_would_drop():
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "items": {"type": "string"}, "description": "x"}},
        "required": ["xs"], "additionalProperties": False}}}
    with pytest.raises(UsageError, match="items"):
        narrow_schema(tool)
    tool["function"]["parameters"]["properties"] = {"n": {"type": "integer", "enum": [1, 2]}}
    with pytest.raises(UsageError):
        narrow_schema(tool)
    tool["function"]["parameters"]["properties"] = {"n": {"type": ["string", "null"]}}
    with pytest.raises(UsageError):
        narrow_schema(tool)


def test_rollout_settings_declare_the_tool_output_limit(exports):
    out = exports["verl"]
    cfg = yaml.safe_load((out / "verl_config.yaml").read_text())
    mt = cfg["actor_rollout_ref"]["rollout"]["multi_turn"]
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    assert mt["max_tool_response_length"] == limit == 4000 and mt["enable"] is True
    assert mt["max_assistant_turns"] > max(t["min_tool_calls"] for t in
                                           pq.read_table(out / "train.parquet").column("extra_info").to_pylist())


def test_config_is_a_main_ppo_config_with_what_validation_needs(exports):
    """verl 0.9.1 reads the reward function only under `reward.`, and main_ppo's validation
    wants micro batch sizes and a rollout engine name (tests/trainers/test_verl.py runs it)."""
    out = exports["verl"]
    cfg = yaml.safe_load((out / "verl_config.yaml").read_text())
    assert cfg["defaults"] == ["ppo_trainer", "_self_"] and cfg["hydra"]["searchpath"] == ["pkg://verl.trainer.config"]
    assert "custom_reward_function" not in cfg
    assert cfg["reward"]["custom_reward_function"] == {"path": "???", "name": "compute_score"}
    aro = cfg["actor_rollout_ref"]
    assert aro["rollout"]["name"] == "vllm" and aro["rollout"]["mode"] == "async"
    assert aro["actor"]["ppo_micro_batch_size_per_gpu"] >= 1
    assert aro["rollout"]["log_prob_micro_batch_size_per_gpu"] >= 1
    assert aro["actor"]["ppo_mini_batch_size"] <= cfg["data"]["train_batch_size"]
    script = (out / "run_verl.sh").read_text()
    assert "-m verl.trainer.main_ppo --config-path=\"$HERE\" --config-name=verl_config" in script
    for key, rel in (("data.train_files", "train.parquet"), ("data.val_files", "test.parquet"),
                     ("actor_rollout_ref.rollout.multi_turn.tool_config_path", "tool_config.yaml"),
                     ("reward.custom_reward_function.path", "reward.py")):
        assert f'    {key}="$HERE/{rel}" \\\n' in script
    assert script.index("reward.custom_reward_function.path") < script.index('"$@"')  # user overrides come last
    card = (out / "README.md").read_text()
    assert "verl 0.9.1" in card and "reward.custom_reward_function" in card and "tool_selection" in card


def test_length_limits_cover_every_prompt_and_reference_episode(exports, bundle):
    """data.max_prompt_length / max_response_length (and the rollout's copies) bound, at one
    token per UTF-8 byte, the longest prompt with every tool schema and the longest reference
    episode (calls, outputs, answer); verl's default of 512 holds neither."""
    out = exports["verl"]
    cfg = yaml.safe_load((out / "verl_config.yaml").read_text())
    settings = json.loads((out / "export.json").read_text())
    data, rollout = cfg["data"], cfg["actor_rollout_ref"]["rollout"]
    assert rollout["prompt_length"] == data["max_prompt_length"] == settings["max_prompt_length"]
    assert rollout["response_length"] == data["max_response_length"] == settings["max_response_length"]
    assert settings["bytes_per_token"] == 1 and data["filter_overlong_prompts"] is True
    schemas = [t["tool_schema"] for t in yaml.safe_load((out / "tool_config.yaml").read_text())["tools"]]
    spec = importlib.util.spec_from_file_location("_verl_budget_runtime", out / "envfactory_runtime.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rt = mod.Runtime(out)
    nbytes = lambda x: len((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)).encode())
    prompts, episodes = [], []
    for t in all_tasks(bundle):
        prompts.append(sum(nbytes(m["content"]) for m in t["messages"]) + sum(nbytes(s) for s in schemas))
        ep = rt.episode(task_id=t["task_id"])
        episodes.append(sum(nbytes(c) + nbytes(ep.call(c["name"], c["arguments"])) for c in t["reference_tool_calls"])
                        + nbytes(t["reference_answer"]))
    assert 512 < max(prompts) < settings["prompt_bytes"] <= data["max_prompt_length"] < settings["prompt_bytes"] + 512
    assert 512 < max(episodes) < settings["response_bytes"] < data["max_response_length"]
    assert data["max_response_length"] == 512 * math.ceil(settings["response_bytes"] * 1.5 / 512)
    assert "1 token per UTF-8 byte" in (out / "README.md").read_text()


def test_tool_class_keeps_state_per_request_and_outputs_under_the_limit(exports, bundle, monkeypatch):
    out = exports["verl"]
    monkeypatch.syspath_prepend(str(out))
    sys.modules.pop("envfactory_verl_tool", None)
    mod = __import__("envfactory_verl_tool")  # how verl's get_tool_class finds it: importable by name
    cfg = yaml.safe_load((out / "tool_config.yaml").read_text())
    tools = {t["tool_schema"]["function"]["name"]: mod.EnvfactoryTool(t["config"], t["tool_schema"]) for t in cfg["tools"]}
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    task = all_tasks(bundle)[-1]  # a top level: most tools
    kwargs = {"create_kwargs": {"task_id": task["task_id"], "env_id": task["env_id"]}}

    async def rollout(request_id, calls):
        agent = SimpleNamespace(request_id=request_id, extra_fields={})
        texts = []
        for call in calls:
            tool = tools[call["name"]]
            iid, _ = await tool.create(**kwargs)
            try:
                resp, reward, metrics = await tool.execute(iid, call["arguments"], agent_data=agent)
            finally:
                await tool.release(iid)
            texts.append(resp.text)
            assert reward == 0.0 and metrics["chars"] == len(resp.text)
        return agent, texts

    agent_a, texts = asyncio.run(rollout("req-a", task["reference_tool_calls"]))
    assert all(len(t) <= limit and json.loads(t)["results"] for t in texts)
    assert agent_a.extra_fields["envfactory_tool_calls"] == len(task["reference_tool_calls"])
    agent_b, _ = asyncio.run(rollout("req-b", task["reference_tool_calls"][:2]))
    assert agent_b.extra_fields["envfactory_tool_calls"] == 2
    agent_a2, _ = asyncio.run(rollout("req-a", task["reference_tool_calls"][:1]))
    assert agent_a2.extra_fields["envfactory_tool_calls"] == len(task["reference_tool_calls"]) + 1
    assert mod.EnvfactoryTool._instances == {}  # every instance released
    assert "calc_reward" not in mod.EnvfactoryTool.__dict__  # verl never calls it; the reward is reward.py's


def test_compute_score_one_for_reference_zero_for_mutant(exports, bundle):
    out = exports["verl"]
    reward = _load(out / "reward.py", "_verl_reward_test")
    rows = pq.read_table(out / "train.parquet").to_pylist() + pq.read_table(out / "test.parquet").to_pylist()
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    for row in rows:
        t = tasks[row["extra_info"]["task_id"]]
        gt, info = row["reward_model"]["ground_truth"], row["extra_info"]
        good = reward.compute_score(row["data_source"], as_response(t["reference_answer"]), gt, info)
        assert good == {"score": 1.0, "answer_found": 1.0, "checks_passed": 1.0}
        bad = reward.compute_score(row["data_source"], as_response(mutant(t["reference_answer"])), gt, info)
        assert bad["score"] == 0.0 and bad["answer_found"] == 1.0 and 0 < bad["checks_passed"] < 1
        details = reward.score_details(as_response(mutant(t["reference_answer"])), t["task_id"])
        failed = [c["name"] for c in details["checks"] if not c["passed"]]
        assert "linked" in failed and "format" not in failed
    t = tasks[rows[0]["extra_info"]["task_id"]]
    # without extra_info the task comes from the ground truth; no JSON at all scores 0
    assert reward.compute_score("x", json.dumps(t["reference_answer"]), rows[0]["reward_model"]["ground_truth"])["score"] == 1.0
    assert reward.compute_score("x", "I could not find a plan.", rows[0]["reward_model"]["ground_truth"]) == \
        {"score": 0.0, "answer_found": 0.0, "checks_passed": 0.0}
    # an answer with an extra key or an extra day is not accepted
    longer = dict(t["reference_answer"], days=t["reference_answer"]["days"] + t["reference_answer"]["days"][:1])
    assert reward.compute_score("x", json.dumps(longer), None, rows[0]["extra_info"])["score"] == 0.0
