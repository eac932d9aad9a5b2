"""The verl export inside verl 0.9.1 itself (its own venv, CPU, nothing from a hub).

Two drivers run verl's code on the export, with a tokenizer trained on the export's prompts
(tiny_model.py): `verl_check.py` (main_ppo's config validation on the shipped command,
`initialize_tools_from_config`, `RLHFDataset`, the reward key) and `verl_rollout.py`
(`AgentLoopWorker` running `ToolAgentLoop` against a scripted model on a loopback HTTP server,
rewards through verl's `RewardLoopWorker` and `load_reward_manager`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import all_tasks, as_response, mutant
from tests.trainers.conftest import run_driver

END = "<|im_end|>"  # tiny_model.py's end of turn
DEFAULT_LIMIT = 512  # verl's own data.max_prompt_length / max_response_length


def _rows(export: Path) -> list[dict]:
    return [r for s in ("train", "test") for r in pq.read_table(export / f"{s}.parquet").to_pylist()]


def _env(tmp: Path) -> dict:
    return {"HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "HF_HOME": str(tmp / "hf-home")}


@pytest.fixture(scope="module")
def verl_py(trainer_python):
    return trainer_python("verl")


@pytest.fixture(scope="module")
def export(exports) -> Path:
    return exports["verl"]


@pytest.fixture(scope="module")
def model_dir(verl_py, export, tmp_path_factory) -> Path:
    """tiny_model.py's tokenizer and model, the tokenizer trained on the export's own prompts."""
    tmp = tmp_path_factory.mktemp("verl-model")
    corpus = tmp / "prompts.txt"
    corpus.write_text("\n".join(m["content"] for r in _rows(export) for m in r["prompt"]), encoding="utf-8")
    built = run_driver(verl_py, "tiny_model.py", tmp / "model", "--corpus", corpus, timeout=300)
    return Path(built["out"])


@pytest.fixture(scope="module")
def checked(verl_py, export, model_dir, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("verl-check")
    return run_driver(verl_py, "verl_check.py", export, model_dir, tmp / "work", env=_env(tmp), cwd=tmp)


def _reference_outputs(export: Path, task: dict) -> list[str]:
    """The tool outputs of the reference calls, from the export's runtime in this process."""
    spec = importlib.util.spec_from_file_location("_verl_trainer_test_runtime", export / "envfactory_runtime.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    episode = mod.Runtime(export).episode(task_id=task["task_id"])
    return [episode.call(c["name"], c["arguments"]) for c in task["reference_tool_calls"]]


def _scripted_turns(task: dict, final: str) -> str:
    """What the scripted model says over an episode (the driver's ScriptedModel.turns)."""
    calls = [f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': c['arguments']})}\n</tool_call>"
             for c in task["reference_tool_calls"]]
    return "".join(t + END for t in (*calls, final))


@pytest.fixture(scope="module")
def rolled(verl_py, export, model_dir, bundle, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("verl-rollout")
    tasks = all_tasks(bundle)
    data = {"tasks": [{"task_id": t["task_id"], "user_prompt": t["messages"][-1]["content"],
                       "reference_tool_calls": t["reference_tool_calls"],
                       "final": {"reference": json.dumps(t["reference_answer"]),
                                 "mutant": json.dumps(mutant(t["reference_answer"]))}} for t in tasks],
            "texts": []}
    by_id = {t["task_id"]: t for t in tasks}
    for row in _rows(export):
        answer = by_id[row["extra_info"]["task_id"]]["reference_answer"]
        for name, text in (("reference", as_response(answer)), ("mutant", as_response(mutant(answer))),
                           ("junk_prose", "I could not find a plan."),
                           ("junk_json", '<tool_call>{"name": "list_cities", "arguments": {}}</tool_call> '
                                         '{"days": "none"}')):
            data["texts"].append({"name": name, "text": text, "data_source": row["data_source"],
                                  "ground_truth": row["reward_model"]["ground_truth"], "extra_info": row["extra_info"]})
    (tmp / "data.json").write_text(json.dumps(data), encoding="utf-8")
    return run_driver(verl_py, "verl_rollout.py", export, model_dir, tmp / "data.json", tmp / "work",
                      env=_env(tmp), cwd=tmp)


def test_shipped_command_passes_main_ppo_validation(checked, export):
    """`bash run_verl.sh actor_rollout_ref.model.path=...` (the README's command) goes through
    main_ppo.main's Hydra parsing and validate_config, and the worker dataclasses build."""
    v = checked["validated"]
    cfg = yaml.safe_load((export / "verl_config.yaml").read_text())
    assert v["argv"][:4] == ["-m", "verl.trainer.main_ppo", f"--config-path={export}", "--config-name=verl_config"]
    assert v["rollout"]["name"] == "vllm" and v["rollout"]["format"] == "hermes"
    assert v["rollout"]["prompt_length"] == v["data"]["max_prompt_length"] == cfg["data"]["max_prompt_length"]
    assert v["rollout"]["response_length"] == v["data"]["max_response_length"] == cfg["data"]["max_response_length"]
    assert v["rollout"]["max_tool_response_length"] == json.loads((export / "export.json").read_text())[
        "max_tool_response_chars"]
    assert v["data"]["train_files"] == str(export / "train.parquet")
    assert v["data"]["val_files"] == str(export / "test.parquet")
    assert v["rollout"]["tool_config_path"] == v["data"]["tool_config_path"] == str(export / "tool_config.yaml")
    assert v["reward_function"] == {"path": str(export / "reward.py"), "name": "compute_score"}
    assert v["reward_manager"] == "naive" and v["model_type"] == "qwen2"
    assert v["use_critic"] is False and v["use_reference_policy"] is False


def test_the_old_top_level_reward_key_is_ignored_by_verl(checked):
    """Why the export sets reward.custom_reward_function: verl 0.9.1 does not read the
    top-level key and falls back to built-in scorers that refuse our data sources."""
    legacy = checked["legacy_reward_key"]
    assert legacy["custom_reward_fn_loaded"] is False
    assert legacy["builtin_fallback"].startswith("NotImplementedError")


def test_initialize_tools_from_config_loads_the_shipped_tools(checked, export):
    shipped = yaml.safe_load((export / "tool_config.yaml").read_text())["tools"]
    loaded = checked["tools"]
    assert [t["name"] for t in loaded] == [t["tool_schema"]["function"]["name"] for t in shipped]
    for tool, cfg in zip(loaded, shipped):
        assert tool["class"] == "envfactory_verl_tool.EnvfactoryTool" and tool["is_base_tool"] is True
        assert tool["schema"] == cfg["tool_schema"]


def test_rlhf_dataset_yields_every_row_with_its_prompt_whole(checked, export, bundle):
    """verl's RLHFDataset, with the shipped data config (overlong prompts filtered, measured with
    every tool schema listed), keeps every row, and every prompt fits the shipped limit;
    verl's default of 512 would not hold them."""
    limit = yaml.safe_load((export / "verl_config.yaml").read_text())["data"]["max_prompt_length"]
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    union = sorted({n for t in tasks.values() for n in t["tools"]})
    seen = []
    for split, s in checked["dataset"]["splits"].items():
        assert s["dataset_rows"] == s["parquet_rows"] == len(pq.read_table(export / f"{split}.parquet"))
        assert s["dataset_tool_schemas"] == len(union)
        for row in s["rows"]:
            t = tasks[row["task_id"]]
            assert row["raw_prompt_is_parquet_prompt"] and row["agent_name"] == "tool_agent"
            assert row["tool_selection"] == t["tools"] and row["tools_kwargs"] == union
            assert DEFAULT_LIMIT < row["tokens_selected_tools"] <= row["tokens_all_tools"] <= limit
            seen.append(row["task_id"])
    assert sorted(seen) == sorted(tasks)


def test_tool_agent_loop_replays_the_reference_and_scores_it(rolled, export, bundle):
    """verl's ToolAgentLoop, fed the reference trajectory by the scripted model: every reference
    call runs through verl's hermes parser and the shipped tool (data, not errors), the prompt
    lists only the task's tools and is not cut, exactly the model's tokens carry response mask
    1, the episode fits the response limit, and verl's reward loop scores it 1.0."""
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    assert rolled["dataset_rows"] == len(tasks) and rolled["server_manager_class"] == "verl.workers.rollout.llm_server"
    rows = rolled["modes"]["reference"]
    assert sorted(r["task_id"] for r in rows) == sorted(tasks)
    for r in rows:
        t = tasks[r["task_id"]]
        n = len(t["reference_tool_calls"])
        assert r["tool_responses"] == _reference_outputs(export, t)
        assert all(json.loads(out)["results"] and "error" not in json.loads(out) for out in r["tool_responses"])
        assert len(r["tool_responses"]) == r["envfactory_tool_calls"] == n
        assert r["num_turns"] == 2 * n + 2  # user prompt, n (assistant, tool) rounds, final answer
        assert r["model_text"] == _scripted_turns(t, json.dumps(t["reference_answer"]))
        assert r["tool_text_in_model_tokens"] is False and r["rollout_log_probs"] is True
        assert r["prompt_is_full_render"] is True and r["prompt_tools"] == t["tools"]
        assert DEFAULT_LIMIT < r["response_tokens"] < r["response_limit"]
        assert r["rm_score"] == 1.0 and r["reward_extra_info"] == {"score": 1.0, "answer_found": 1.0,
                                                                    "checks_passed": 1.0}
    assert rolled["requests"] == 2 * sum(len(t["reference_tool_calls"]) + 1 for t in tasks.values())


def test_tool_agent_loop_scores_a_wrong_final_answer_zero(rolled, bundle):
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    for r in rolled["modes"]["mutant"]:
        t = tasks[r["task_id"]]
        assert r["envfactory_tool_calls"] == len(t["reference_tool_calls"])
        assert r["model_text"] == _scripted_turns(t, json.dumps(mutant(t["reference_answer"])))
        assert r["rm_score"] == 0.0 and r["reward_extra_info"]["score"] == 0.0
        assert r["reward_extra_info"]["answer_found"] == 1.0 and 0 < r["reward_extra_info"]["checks_passed"] < 1


def test_verl_reward_loading_scores_reference_one_and_junk_zero(rolled, export):
    """load_reward_manager / get_custom_reward_fn with the shipped config: verl's naive reward
    manager decodes the response and calls reward.compute_score."""
    by_name = {}
    for r in rolled["reward_manager"]:
        by_name.setdefault(r["name"], []).append(r)
        assert r["reward_extra_info"] == r["function"]
    assert len(by_name["reference"]) == len(_rows(export))
    assert all(r["reward_score"] == 1.0 for r in by_name["reference"])
    assert all(r["reward_score"] == 0.0 and r["reward_extra_info"]["answer_found"] == 1.0 for r in by_name["mutant"])
    for r in by_name["junk_prose"] + by_name["junk_json"]:
        assert r["reward_score"] == 0.0 and r["reward_extra_info"]["score"] == 0.0
    assert all(r["reward_extra_info"]["answer_found"] == 0.0 for r in by_name["junk_prose"])
