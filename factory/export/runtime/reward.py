"""Reward for envfactory tasks: `compute_score(data_source, solution_str, ground_truth, extra_info)`.

verl loads this file by path (`custom_reward_function.path`); it also works as a plain
function elsewhere. The answer is the last JSON object of the response that is not a tool
call or tool result (reasoning in `<think>` is ignored); the task's generated verifier
scores it exactly against the environment's database: 1.0 only if every check passes.
The task comes from `extra_info["task_id"]`, else from the JSON `ground_truth`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_RUNTIME = None


def _runtime():
    global _RUNTIME
    if _RUNTIME is None:
        spec = importlib.util.spec_from_file_location(f"_envfactory_runtime_{abs(hash(str(_HERE)))}",
                                                      _HERE / "envfactory_runtime.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _RUNTIME = mod.Runtime(_HERE)
    return _RUNTIME


def _task_id(ground_truth, extra_info) -> str | None:
    if isinstance(extra_info, dict) and extra_info.get("task_id"):
        return extra_info["task_id"]
    try:
        return json.loads(ground_truth)["task_id"]
    except (TypeError, ValueError, KeyError):
        return None


def score_details(solution_str, task_id: str) -> dict:
    """The runtime's full result: score, named checks with reasons, the parsed answer."""
    return _runtime().score_text(task_id, solution_str)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    task_id = _task_id(ground_truth, extra_info)
    if task_id is None or task_id not in _runtime().tasks:
        return {"score": 0.0, "answer_found": 0.0, "checks_passed": 0.0}
    result = score_details(solution_str, task_id)
    checks = result["checks"]
    return {"score": result["score"], "answer_found": float(result["answer"] is not None),
            "checks_passed": sum(c["passed"] for c in checks) / len(checks)}
