"""jsonl: task rows for NeMo Gym, slime and OpenRLHF, plus their reward hooks (`rewards.py`).

- `nemo_gym/<split>.jsonl`: `responses_create_params` ({input: messages, tools: Responses-API
  function tools, flat with `strict: true`}), `task_id`, `expected_answer` (JSON text),
  `verifier_metadata` {task_id, env_id, level}.
- `slime/<split>.jsonl`: `prompt` (messages), `label` (JSON text {task_id, reference_answer}),
  `metadata` {source_name: env_id, task_id, level}, `tools` (OpenAI tools); slime flags
  `--input-key prompt --label-key label --metadata-key metadata --tool-key tools`.
- `openrlhf/<split>.jsonl`: `prompt` (messages; `--data.apply_chat_template`), `label` (JSON
  text), `datasource` (env id).
"""

from __future__ import annotations

import json
from pathlib import Path

from envfactory.factory.export import register
from envfactory.factory.export.common import (
    Source,
    copy_envs,
    copy_runtime,
    json_text,
    max_tool_chars,
    task_rows,
    write_card,
    write_settings,
)

__all__ = ["FORMATS", "write"]

FORMATS = ("nemo_gym", "slime", "openrlhf")


def _responses_tool(s: dict) -> dict:
    fn = s["function"]
    return {"type": "function", "name": fn["name"], "description": fn["description"],
            "parameters": fn["parameters"], "strict": True}


def _rows(t: dict, schemas: dict) -> dict:
    messages = [{"role": m["role"], "content": m["content"]} for m in t["messages"]]
    tools = [schemas[n] for n in t["tools"]]
    label = json_text({"task_id": t["task_id"], "reference_answer": t["reference_answer"]})
    return {
        "nemo_gym": {"responses_create_params": {"input": messages, "tools": [_responses_tool(s) for s in tools]},
                     "task_id": t["task_id"], "expected_answer": json_text(t["reference_answer"]),
                     "verifier_metadata": {"task_id": t["task_id"], "env_id": t["env_id"], "level": t["level"]}},
        "slime": {"prompt": messages, "label": label, "tools": tools,
                  "metadata": {"source_name": t["env_id"], "task_id": t["task_id"], "level": t["level"]}},
        "openrlhf": {"prompt": messages, "label": label, "datasource": t["env_id"]},
    }


def write(src: Source, dest: Path, splits: dict) -> dict:
    schemas = {e.env_id: {s["function"]["name"]: s for s in e.schemas} for e in src.envs}
    files = {}
    for split, rs in task_rows(src, splits).items():
        if not rs:
            continue
        rows = [_rows(t, schemas[t["env_id"]]) for t in rs]
        for fmt in FORMATS:
            (dest / fmt).mkdir(exist_ok=True)
            path = dest / fmt / f"{split}.jsonl"
            path.write_text("".join(json.dumps(r[fmt], sort_keys=True, ensure_ascii=False) + "\n" for r in rows),
                            encoding="utf-8")
            files[f"{fmt}/{split}"] = path.relative_to(dest).as_posix()
    limit = max_tool_chars(src)
    write_settings(dest, {"target": "jsonl", "max_tool_response_chars": limit})
    copy_envs(src, dest)
    copy_runtime(dest, "rewards.py")
    usage = """
- **NeMo Gym**: rows in `nemo_gym/*.jsonl`; a resources server's `verify()` calls
  `rewards.nemo_gym_verify(row, response_text)` -> `{"reward", "checks"}`.
- **slime**: `--prompt-data slime/train.jsonl --input-key prompt --label-key label --metadata-key metadata
  --tool-key tools --custom-rm-path rewards.custom_rm` (with this directory on `PYTHONPATH`).
- **OpenRLHF**: `--data.input_key prompt --data.label_key label --data.apply_chat_template
  --reward.remote_url rewards.py` (`reward_func(queries, prompts, labels)`).

Labels are JSON text `{"task_id", "reference_answer"}`; the reference is one feasible plan, so the
hooks run the task's verifier on the response instead of comparing with it. Tool calls are served
by `envfactory_runtime.Runtime` (or the `mcp` export) with outputs under the declared length.
"""
    write_card(dest, "jsonl", src, splits, usage,
               {s: f"slime/{s}.jsonl" for s in ("train", "test") if f"slime/{s}" in files}, limit)
    return {"max_tool_response_chars": limit, "data_files": files}


register("jsonl", write, "JSONL rows for NeMo Gym, slime and OpenRLHF with reward hooks")
