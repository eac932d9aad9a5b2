"""The jsonl export through OpenRLHF 0.11.2 and nemo-gym 0.7.0, each in its own venv.

OpenRLHF: its dataset loader and `PromptDataset`, its single-turn executor loading
`rewards.py`, its `--train.agent_func_path` loader and `MultiTurnAgentExecutor` running
`openrlhf_agent.py` over the reference tool calls (a scripted policy stands in for vLLM, a
tiny local tokenizer for the model's), and its experience builder on the result.
NeMo Gym: its row validation (`compute_sample_metrics`, `BaseRunRequest`) and the exported
resources server driven as its simple agent drives one (seed, tool calls, verify).
slime is not on PyPI: `slime_generate.py` is only compiled (tests/export/test_jsonl.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import all_tasks, as_response, mutant
from tests.trainers import venvs
from tests.trainers.conftest import run_driver


def _data(bundle, exports, tmp_path: Path) -> tuple[Path, dict]:
    """The first task of each environment: responses, plans, reference calls, tool names."""
    firsts = {}
    for t in all_tasks(bundle):
        firsts.setdefault(t["env_id"], t)
    tasks = {t["task_id"]: {"good": as_response(t["reference_answer"]), "bad": as_response(mutant(t["reference_answer"])),
                            "answer": t["reference_answer"], "mutant": mutant(t["reference_answer"]),
                            "calls": t["reference_tool_calls"], "tools": t["tools"]} for t in firsts.values()}
    first = next(iter(firsts.values()))
    schemas = json.loads((exports["jsonl"] / "envs" / first["env_id"] / "tools" / "tool_schemas.json").read_text())
    foreign = next((s["function"]["name"] for s in schemas if s["function"]["name"] not in first["tools"]), None)
    data = {"tasks": tasks, "foreign_tool": foreign}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    return path, data


def test_openrlhf(trainer_python, bundle, exports, tmp_path):
    path, data = _data(bundle, exports, tmp_path)
    out = run_driver(trainer_python("openrlhf"), "jsonl_openrlhf.py", exports["jsonl"], path, tmp_path)
    n_rows = len(all_tasks(bundle))
    assert out["dataset"] == {"rows": n_rows, "prompts_match": n_rows, "labels_match": n_rows,
                              "datasources_match": n_rows}
    assert out["executor"] == "AgentExecutor"
    for task_id, t in data["tasks"].items():
        assert out["single_turn"][task_id] == {"good": {"reward": 1.0, "scores": 1.0},
                                               "bad": {"reward": 0.0, "scores": 0.0}}
        good, bad, junk = (out["multi_turn"][task_id][k] for k in ("good", "bad", "junk"))
        n = len(t["calls"])
        assert good["reward"] == good["scores"] == good["experience_reward"] == 1.0
        assert good["turns"] == n + 1 and good["extra_logs"]["envfactory_tool_calls"] == n
        assert good["tools_in_prompt"] == t["tools"] and good["prompt_has_tools_block"]
        # every tool result reached the policy inside a tool turn, carrying rows, and the next
        # turn opened as an assistant turn
        assert good["responses_with_results"] == n and good["responses_with_error"] == 0
        assert good["turn_openings_ok"] == n
        # the training sample masks the tool turns out: only the policy's tokens are actions
        assert good["experience_action_tokens"] == good["action_tokens"] < good["tokens"] // 2
        assert bad["reward"] == bad["experience_reward"] == 0.0 and bad["responses_with_results"] == 2
        assert junk["reward"] == 0.0 and junk["turns"] == 1
    if data["foreign_tool"]:
        foreign = out["foreign"]
        assert foreign["responses_with_error"] == 1 and foreign["extra_logs"]["envfactory_tool_errors"] == 1
    unknown = out["unknown_label"]
    assert unknown["reward"] == 0.0 and unknown["turns"] == 1 and not unknown["prompt_has_tools_block"]


def test_nemo_gym(trainer_python, bundle, exports, tmp_path):
    if not Path(venvs.SPECS["nemo-gym"].python).is_file():
        pytest.skip(f"no CPython 3.13 for nemo-gym ({venvs.SPECS['nemo-gym'].python})")
    path, data = _data(bundle, exports, tmp_path)
    out = run_driver(trainer_python("nemo-gym"), "jsonl_nemo_gym.py", exports["jsonl"], path)
    tasks = all_tasks(bundle)
    rows = [json.loads(l) for p in sorted((exports["jsonl"] / "nemo_gym").glob("*.jsonl"))
            for l in p.read_text().splitlines()]
    assert out["dataset"] == {"rows": len(tasks), "offending": 0,
                              "number_of_tools": [len(r["responses_create_params"]["tools"]) for r in rows]}
    ok = {"seed_status": 200, "verify_status": 200}
    for task_id, t in data["tasks"].items():
        r = out["tasks"][task_id]
        n = len(t["calls"])
        assert r["good"] == dict(ok, reward=1.0, checks_passed=1.0, failed=[], outputs=n, outputs_with_results=n,
                                 outputs_with_error=0)
        assert r["bad"]["reward"] == 0.0 and "linked" in r["bad"]["failed"]  # the mutant's own defect
        assert r["junk"]["reward"] == 0.0 and r["junk"]["failed"] == ["format"]
        assert r["hostile"]["verify_status"] == 200 and r["hostile"]["reward"] == 0.0
    if data["foreign_tool"]:
        assert out["foreign"]["outputs_with_error"] == 1 and out["foreign"]["reward"] == 0.0
    assert out["unknown_task"]["reward"] == 0.0 and out["unknown_task"]["failed"] == ["task"]
    assert out["unknown_task"]["outputs_with_error"] == 1  # an unseeded session has no tools
