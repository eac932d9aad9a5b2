"""jsonl: task rows for NeMo Gym, slime and OpenRLHF, their reward hooks (`rewards.py`) and
multi-turn agent modules.

- `nemo_gym/<split>.jsonl`: `responses_create_params` ({input: messages, tools: Responses-API
  function tools, flat with `strict: true`}), `task_id`, `expected_answer` (JSON text),
  `verifier_metadata` {task_id, env_id, level}. `nemo_gym_resources_server.py` is a NeMo Gym
  resources server: the tools as POST routes, `/seed_session` binding a session to the row's
  task, `/verify` scoring the response with the task's verifier.
- `slime/<split>.jsonl`: `prompt` (messages), `label` (JSON text {task_id, reference_answer}),
  `metadata` {source_name: env_id, task_id, level}, `tools` (OpenAI tools); slime flags
  `--input-key prompt --label-key label --metadata-key metadata --tool-key tools`.
  `slime_generate.generate` is a `--custom-generate-function-path` running the tool loop.
- `openrlhf/<split>.jsonl`: `prompt` (messages; `--data.apply_chat_template`), `label` (JSON
  text), `datasource` (env id), `tools` (the OpenAI tools as JSON text: OpenRLHF's dataset
  does not read them, and as objects `datasets` would have to infer one struct type for every
  tool's parameters). `openrlhf_agent.py` is an `--train.agent_func_path` module that renders
  the tools into the prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from envfactory.factory.export import register
from envfactory.factory.export.common import (
    InputBundle,
    copy_envs,
    copy_runtime,
    duckdb_requirement,
    json_text,
    max_tool_chars,
    render,
    task_rows,
    write_card,
    write_settings,
)

__all__ = ["FORMATS", "OPENRLHF_VERSION", "NEMO_GYM_VERSION", "write"]

FORMATS = ("nemo_gym", "slime", "openrlhf")
OPENRLHF_VERSION = "0.11.2"  # the release the agent module and reward hook are tested against
NEMO_GYM_VERSION = "0.7.0"
SLIME_COMMIT = "624b824"  # THUDM/slime source the slime hooks are written against (not on PyPI)


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
        "openrlhf": {"prompt": messages, "label": label, "datasource": t["env_id"], "tools": json_text(tools)},
    }


USAGE = """
Every row's task runs in `envfactory_runtime.Runtime` (tools over the read-only sandbox, outputs
under the declared length). Labels are JSON text `{{"task_id", "reference_answer"}}`; the reference
is one feasible plan, so the hooks run the task's verifier on the response instead of comparing
with it. Tool calls in model text are hermes blocks `<tool_call>{{"name", "arguments"}}</tool_call>`
(Qwen-style chat templates); results are rendered by the model's own chat template.

- **OpenRLHF** {openrlhf}: `--data.prompt_dataset openrlhf/train.jsonl --data.input_key prompt
  --data.label_key label --data.apply_chat_template` and either `--train.agent_func_path openrlhf_agent.py`
  (multi-turn: the tools are rendered into the prompt, calls run, reward at the end; at most {max_turns}
  turns) or `--reward.remote_url rewards.py` (single turn, `reward_func(queries, prompts, labels)`); absolute
  paths for Ray's workers. `--data.max_len` (default 2048 tokens) must hold a whole trajectory: the prompt,
  the turns and every tool output (each at most {limit} characters).
- **slime** (source @ {slime}): `--prompt-data slime/train.jsonl --input-key prompt --label-key label
  --metadata-key metadata --tool-key tools --apply-chat-template
  --custom-generate-function-path slime_generate.generate --custom-rm-path rewards.custom_rm`, with this
  directory on `PYTHONPATH`. Without the custom generate the rows are single-turn. slime is not on PyPI:
  `slime_generate.py` is written against that source and tested only over a stand-in of the slime API
  it calls.
- **NeMo Gym** {nemo_gym}: rows in `nemo_gym/*.jsonl`; `nemo_gym_resources_server.py` is a resources
  server (`EnvfactoryResourcesServer`): tools as POST routes, `/verify` runs the verifier. Outside NeMo
  Gym, `rewards.nemo_gym_verify(row, response)` gives the same `{{"reward", "checks"}}`.
"""


def write(src: InputBundle, dest: Path, splits: dict) -> dict:
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
    max_turns = 2 * max(t["min_tool_calls"] for t in src.tasks) + 2
    write_settings(dest, {"target": "jsonl", "max_tool_response_chars": limit, "max_turns": max_turns})
    copy_envs(src, dest)
    copy_runtime(dest, "rewards.py")
    (dest / "requirements.txt").write_text(
        "# What the shipped hooks and agent modules import besides the trainer; the DuckDB floor is the\n"
        "# release that wrote envs/*/db/sandbox.duckdb (older DuckDB cannot open it).\n"
        + duckdb_requirement(src) + "\n", encoding="utf-8")
    for name in ("openrlhf_agent.py", "slime_generate.py", "nemo_gym_resources_server.py"):
        render(f"{name}.j2", dest / name, max_turns=max_turns)
    usage = USAGE.format(openrlhf=OPENRLHF_VERSION, nemo_gym=NEMO_GYM_VERSION, slime=SLIME_COMMIT,
                         max_turns=max_turns, limit=limit)
    write_card(dest, "jsonl", src, splits, usage,
               {s: f"slime/{s}.jsonl" for s in ("train", "test") if f"slime/{s}" in files}, limit)
    return {"max_tool_response_chars": limit, "max_turns": max_turns, "data_files": files}


register("jsonl", write, "JSONL rows for NeMo Gym, slime and OpenRLHF with reward hooks and agent modules")
