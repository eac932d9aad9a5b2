"""TRL 1.16.0 on the trl export, in the trl venv (CPU, a tiny local model, nothing from a hub):
TRL's own GRPOTrainer runs two training steps with the export's environment classes
(`environment_factory=ENVIRONMENTS`) and reward function on train.parquet, and the tool calls
the model makes inside that run return data. The driver (drivers/trl_grpo.py) first
fine-tunes the tiny model (drivers/tiny_model.py) on each train task's first reference tool
call, so that it emits hermes tool calls at all; a random model of that size does not.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import all_tasks, export_schemas, mutant
from tests.trainers.conftest import run_driver

STEPS = 2
SFT_STEPS = 150  # SFT loss 6.4 -> ~0.05 on the train tasks; about a minute on 2 cores


@pytest.fixture(scope="module")
def run(trainer_python, exports, bundle, tmp_path_factory):
    work = tmp_path_factory.mktemp("trl_run")
    tasks = {t["task_id"]: {"reference_tool_calls": t["reference_tool_calls"],
                            "reference_answer": t["reference_answer"], "mutant": mutant(t["reference_answer"])}
             for t in all_tasks(bundle)}
    data = work / "data.json"
    data.write_text(json.dumps({"tasks": tasks, "steps": STEPS, "sft_steps": SFT_STEPS}))
    result = run_driver(trainer_python("trl"), "trl_grpo.py", exports["trl"], data, work, timeout=1800,
                        env={"TRL_EXPERIMENTAL_SILENCE": "1"})
    (work / "result.json").write_text(json.dumps(result, indent=1))  # for reading a failure
    return result


_schemas = export_schemas


def test_requirements_file_holds_in_the_venv_that_trains(run, exports):
    reqs = {r["line"].split(">")[0].split("=")[0].split("<")[0]: r for r in run["requirements"]}
    assert {"duckdb", "trl", "transformers"} <= set(reqs)
    assert all(r["ok"] for r in run["requirements"]), run["requirements"]
    readme = (exports["trl"] / "README.md").read_text()
    assert "pip install -r requirements.txt" in readme


def test_trl_derives_each_tool_schema_from_the_generated_methods(run, exports):
    ours = _schemas(exports["trl"])
    assert set(run["schemas"]) == set(ours)
    for name, schema in run["schemas"].items():  # what apply_chat_template(tools=[method]) renders
        got, want = schema["function"], ours[name]
        assert schema["type"] == "function"
        assert got["name"] == name and got["description"] == want["description"]
        props = want["parameters"].get("properties", {})
        assert set(got["parameters"].get("properties", {})) == set(props)
        for p, spec in props.items():
            g = got["parameters"]["properties"][p]
            assert (g["type"], g.get("description"), g.get("enum")) == (spec["type"], spec.get("description"),
                                                                          spec.get("enum"))
        assert sorted(got["parameters"].get("required", [])) == sorted(want["parameters"].get("required", []))


def test_each_prompt_is_rendered_with_its_own_task_tools_only(run):
    for key, names in run["classes"].items():
        assert names == sorted(key.split("+"))
    assert run["train"]["env_tools"] == run["classes"]
    rows = {r["user"]: sorted(r["tools"]) for r in run["train_rows"].values()}
    assert run["train"]["rendered"], "no prompt was rendered"
    for user, tool_lists in run["train"]["rendered"]:
        assert tool_lists == [rows[user]]  # rendered with exactly its task's tools, every time
    assert len({tuple(t) for _, ts in run["train"]["rendered"] for t in ts}) >= 2  # routing, not one set


def test_reward_scores_reference_one_and_junk_zero(run):
    r = run["rewards"]
    assert r["reference_by_task_id"] and set(r["reference_by_task_id"]) == {1.0}
    assert set(r["reference_by_environment"]) == {1.0} and len(r["reference_by_environment"]) == len(
        r["reference_by_task_id"])
    assert r["junk"] and set(r["junk"]) == {0.0}
    assert r["no_task"] == [0.0, 0.0]
    assert set(r["reasons"]) == {"all checks passed"}
    assert "linked" in r["junk_reasons"]  # the mutant's hotels are in the wrong cities


def test_readme_snippet_builds_the_trainer_with_the_shipped_settings(run, exports, bundle):
    settings = json.loads((exports["trl"] / "trl_config.json").read_text())
    snippet = run["snippet"]
    assert {k: snippet[k] for k in settings} == settings
    assert snippet["uses_ENVIRONMENTS"] and snippet["factories"] == sorted(run["classes"])
    # The bound covers a real tokenizer's count of every reference episode (TRL's default, 512, does not).
    longest = max(t["completion"] for t in run["reference_tokens"].values())
    assert 512 < longest <= settings["max_completion_length"]
    assert settings["max_tool_calling_iterations"] >= max(len(t["reference_tool_calls"]) for t in all_tasks(bundle))


def test_grpo_trains_two_steps_and_its_tool_calls_return_data(run):
    train = run["train"]
    assert run["tiny"]["sft_loss"][1] < run["tiny"]["sft_loss"][0] / 10
    assert train["global_step"] == STEPS and train["rollouts"] > 0
    with_data = [m for m in train["tool_messages"] if m["keys"] == ["results"] and m["results"] > 0]
    assert with_data, train["tool_messages"]
    calls = [c for ep in train["episode_calls"] if ep for c in ep]
    assert calls and not any(c["error"] for c in calls)  # the environments ran them, none answered an error
    assert len(calls) == len(train["tool_messages"])
    assert all(f > 0 for f in train["metrics"]["tools/call_frequency"])
    assert train["metrics"]["envfactory/tool_error_rate"] == [0.0] * STEPS
    rewards = [r for step in train["step_rewards"] for r in step]
    assert len(train["step_rewards"]) == STEPS and len(rewards) == train["rollouts"]
    assert set(rewards) <= {0.0, 1.0}
    assert max(train["metrics"]["completions/max_length"]) <= train["max_completion_length"]
