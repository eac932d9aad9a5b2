"""verl: train/test parquet for `ToolAgentLoop`, tool_config.yaml, a BaseTool keyed on the
request id, `reward.py` with `compute_score`, and the rollout settings that go with them.

Traps handled (shared/reference/formats.md §1): verl's tool schema model keeps only `type`,
`description` and string `enum` per property, so schemas are narrowed here and refused if
narrowing would lose anything but `additionalProperties: false`; verl truncates tool output
at `max_tool_response_length` characters (default 256), so the export declares the tools'
real cap and the runtime keeps every output under it; tools are created and released per
call, so episode state is keyed on `agent_data.request_id`; every row carries
`create_kwargs` for every tool of the union, since verl reads `tools_kwargs[tool]` for any
tool the model calls.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from envfactory.factory.errors import UsageError
from envfactory.factory.export import register
from envfactory.factory.export.common import (
    Source,
    copy_envs,
    copy_runtime,
    json_text,
    max_tool_chars,
    task_rows,
    union_schemas,
    write_card,
    write_settings,
)

__all__ = ["narrow_schema", "write"]

TOOL_CLASS = "envfactory_verl_tool.EnvfactoryTool"
PROP_KEYS = {"type", "description", "enum"}


def narrow_schema(tool: dict) -> dict:
    """An OpenAI tool schema in the subset verl's `OpenAIFunctionToolSchema` keeps, or UsageError."""
    fn = tool["function"]
    params = fn.get("parameters") or {"type": "object", "properties": {}, "required": []}
    extra = set(params) - {"type", "properties", "required", "additionalProperties"}
    if extra or params.get("type") != "object" or params.get("additionalProperties", False) is not False:
        raise UsageError(f"tool {fn['name']}: parameters use {sorted(extra) or 'a non-flat object'}, "
                         f"which verl's tool schema drops")
    props = {}
    for name, p in params.get("properties", {}).items():
        lost = set(p) - PROP_KEYS
        if lost or not isinstance(p.get("type"), str) or not all(isinstance(v, str) for v in p.get("enum", [])):
            raise UsageError(f"tool {fn['name']}.{name}: {sorted(lost) or 'type/enum'} would be dropped by verl")
        props[name] = {k: p[k] for k in ("type", "description", "enum") if k in p}
    return {"type": "function", "function": {"name": fn["name"], "description": fn["description"],
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(params.get("required", []))}}}


def _row(t: dict, tool_names: list[str]) -> dict:
    create = {"task_id": t["task_id"], "env_id": t["env_id"]}
    return {
        "data_source": t["env_id"],
        "agent_name": "tool_agent",
        "prompt": [{"role": m["role"], "content": m["content"]} for m in t["messages"]],
        "ability": t["seed"],
        "reward_model": {"style": "rule",
                         "ground_truth": json_text({"task_id": t["task_id"], "reference_answer": t["reference_answer"]})},
        "extra_info": {"split": t["split"], "index": t["index"], "task_id": t["task_id"], "env_id": t["env_id"],
                       "level": t["level"], "solution_count": t["solution_count"],
                       "min_tool_calls": t["min_tool_calls"], "need_tools_kwargs": True,
                       "tools_kwargs": {n: {"create_kwargs": create} for n in tool_names}},
    }


def _run_script(settings: dict) -> str:
    mt = settings["multi_turn"]
    return f"""#!/usr/bin/env bash
# Train with verl on this export: bash run_verl.sh actor_rollout_ref.model.path=... [more overrides]
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
export PYTHONPATH="$HERE${{PYTHONPATH:+:$PYTHONPATH}}"
exec python3 -m verl.trainer.main_ppo \\
    algorithm.adv_estimator=grpo \\
    data.train_files="$HERE/train.parquet" \\
    data.val_files="$HERE/{settings['val_file']}" \\
    data.return_raw_chat=True \\
    actor_rollout_ref.rollout.mode=async \\
    actor_rollout_ref.rollout.multi_turn.enable=True \\
    actor_rollout_ref.rollout.multi_turn.tool_config_path="$HERE/tool_config.yaml" \\
    actor_rollout_ref.rollout.multi_turn.format={mt['format']} \\
    actor_rollout_ref.rollout.multi_turn.max_tool_response_length={mt['max_tool_response_length']} \\
    actor_rollout_ref.rollout.multi_turn.tool_response_truncate_side={mt['tool_response_truncate_side']} \\
    actor_rollout_ref.rollout.multi_turn.max_assistant_turns={mt['max_assistant_turns']} \\
    actor_rollout_ref.rollout.multi_turn.max_parallel_calls={mt['max_parallel_calls']} \\
    custom_reward_function.path="$HERE/reward.py" \\
    custom_reward_function.name=compute_score \\
    "$@"
"""


def write(src: Source, dest: Path, splits: dict) -> dict:
    schemas = union_schemas(src)
    names = [s["function"]["name"] for s in schemas]
    rows = task_rows(src, splits)
    files = {}
    for split, rs in rows.items():
        if rs:
            pq.write_table(pa.Table.from_pylist([_row(t, names) for t in rs]), dest / f"{split}.parquet",
                           compression="zstd")
            files[split] = f"{split}.parquet"
    tool_config = {"tools": [{"class_name": TOOL_CLASS, "config": {"type": "native"}, "tool_schema": narrow_schema(s)}
                             for s in schemas]}
    (dest / "tool_config.yaml").write_text(yaml.safe_dump(tool_config, sort_keys=False, width=100), encoding="utf-8")
    limit = max_tool_chars(src)
    most_calls = max(t["min_tool_calls"] for t in src.tasks)
    multi_turn = {"enable": True, "tool_config_path": "tool_config.yaml", "format": "hermes",
                  "max_tool_response_length": limit, "tool_response_truncate_side": "middle",
                  "max_parallel_calls": 1, "max_assistant_turns": 2 * most_calls + 2}
    rollout = {"data": {"return_raw_chat": True},
               "actor_rollout_ref": {"rollout": {"mode": "async", "multi_turn": multi_turn}},
               "custom_reward_function": {"path": "reward.py", "name": "compute_score"}}
    (dest / "verl_config.yaml").write_text(
        "# Settings this export needs (merge into your verl config; paths are relative to this directory).\n"
        + yaml.safe_dump(rollout, sort_keys=False), encoding="utf-8")
    settings = {"target": "verl", "max_tool_response_chars": limit, "multi_turn": multi_turn,
                "val_file": files.get("test", files["train"])}
    (dest / "run_verl.sh").write_text(_run_script(settings), encoding="utf-8")
    write_settings(dest, {"target": "verl", "max_tool_response_chars": limit})
    copy_envs(src, dest)
    copy_runtime(dest, "envfactory_verl_tool.py", "reward.py")
    usage = f"""
```bash
bash run_verl.sh actor_rollout_ref.model.path=Qwen/Qwen3-0.6B trainer.n_gpus_per_node=1
```

`run_verl.sh` passes the settings in `verl_config.yaml`: `ToolAgentLoop` (`agent_name: tool_agent`),
`tool_config.yaml` ({len(names)} tools, class `{TOOL_CLASS}`, found through `PYTHONPATH`),
`max_tool_response_length: {limit}` (verl's default of 256 would cut tool results), and
`custom_reward_function.path=reward.py` (`compute_score` parses the last JSON object of the
response and runs the task's verifier: 1 only if every check passes). `reward_model.ground_truth`
is JSON text `{{"task_id", "reference_answer"}}`; the reference is one feasible plan among
`extra_info.solution_count`, so scoring runs the verifier rather than comparing with it.
"""
    write_card(dest, "verl", src, splits, usage, {s: f for s, f in files.items()}, limit)
    return {"max_tool_response_chars": limit, "tools": names, "data_files": files}


register("verl", write, "verl ToolAgentLoop: parquet, tool_config.yaml, request-keyed BaseTool, compute_score")
