"""Reward hooks for JSONL trainers, over envfactory's verifiers (exact: 1.0 or 0.0).

- slime: `--custom-rm-path rewards.custom_rm` -> `async custom_rm(args, sample) -> float`
  (task from `sample.metadata["task_id"]`, else the JSON `sample.label`).
- OpenRLHF: `--reward.remote_url rewards.py` -> `reward_func(queries, prompts, labels)`
  returning {"rewards", "scores", "extra_logs"} (torch tensors when torch is importable).
- NeMo Gym: `nemo_gym_verify(row, response_text) -> {"reward": float, "checks": [...]}` for a
  resources server's `verify()`; the row is one line of nemo_gym/*.jsonl.

`score(task_id, text)` is the shared core; the answer is the last JSON object of the text
that is not tool traffic.
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


def score(task_id: str, text) -> float:
    rt = _runtime()
    if task_id not in rt.tasks:
        return 0.0
    return rt.score_text(task_id, text)["score"]


def _label_task(label) -> str | None:
    try:
        return json.loads(label)["task_id"]
    except (TypeError, ValueError, KeyError):
        return None


async def custom_rm(args, sample) -> float:
    meta = getattr(sample, "metadata", None) or {}
    task_id = meta.get("task_id") or _label_task(getattr(sample, "label", None))
    return score(task_id, getattr(sample, "response", "")) if task_id else 0.0


def reward_func(queries, prompts, labels, **kwargs):
    scores = []
    for query, prompt, label in zip(queries, prompts, labels):
        task_id = _label_task(label)
        response = query[len(prompt):] if isinstance(query, str) and isinstance(prompt, str) \
            and query.startswith(prompt) else query
        scores.append(score(task_id, response) if task_id else 0.0)
    try:
        import torch

        values = torch.tensor(scores, dtype=torch.float32)
    except ImportError:
        values = scores
    return {"rewards": values, "scores": values, "extra_logs": {"envfactory_score": values}}


def nemo_gym_verify(row: dict, response_text: str) -> dict:
    task_id = row.get("task_id") or row.get("verifier_metadata", {}).get("task_id")
    rt = _runtime()
    if task_id not in rt.tasks:
        return {"reward": 0.0, "checks": [{"name": "task", "passed": False, "reason": f"unknown task {task_id!r}"}]}
    result = rt.score_text(task_id, response_text)
    return {"reward": result["score"], "checks": result["checks"]}
