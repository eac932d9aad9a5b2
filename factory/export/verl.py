"""verl: train/test parquet for `ToolAgentLoop`, tool_config.yaml, a BaseTool keyed on the
request id, `reward.py` with `compute_score`, and a Hydra config plus launcher for
`verl.trainer.main_ppo` (verl 0.9.1; tests/trainers/test_verl.py runs verl's own code on it).

Traps handled (shared/reference/formats.md §1, verl 0.9.1 source):
- the reward function is read from `reward.custom_reward_function` only; verl 0.9 dropped
  the migration of the older top-level `custom_reward_function`, which it now ignores
  (main_ppo then falls back to its built-in scorers, which refuse an unknown data source);
- verl's default prompt and response limits are 512 tokens, far under a tool episode; the
  limits here are measured from the export's own prompts and reference trajectories (see
  `Budget`);
- `main_ppo` validates the config before training: micro batch sizes and `rollout.name`
  have no defaults there, so the shipped config sets them;
- `ToolAgentLoop` shows a row's model only the tools named in `extra_info.tool_selection`
  (else every tool of tool_config.yaml), so each row names its task's own tools;
- verl's tool schema model keeps only `type`, `description` and `enum` per property, so
  schemas are narrowed here and refused if narrowing would lose anything but
  `additionalProperties: false`;
- verl truncates tool output at `max_tool_response_length` characters (default 256), so the
  export declares the tools' real cap and the runtime keeps every output under it;
- tools are created and released per call, so episode state is keyed on
  `agent_data.request_id`.

Every row carries `create_kwargs` for every tool of the union, not only its task's: parquet
gives a struct column one set of fields for all rows, and a row without a tool's entry
would read it back as null.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from envfactory.factory.errors import UsageError
from envfactory.factory.export import register
from envfactory.factory.export.common import (
    InputBundle,
    copy_envs,
    copy_runtime,
    duckdb_requirement,
    json_text,
    max_tool_chars,
    task_rows,
    union_schemas,
    write_card,
    write_settings,
)
from envfactory.factory.export.lengths import BYTES_PER_TOKEN, HEADROOM, PROMPT_TEMPLATE_BYTES, Lengths, measure

__all__ = ["TURN_TEMPLATE_BYTES", "measure_budget", "narrow_schema", "write"]

TOOL_CLASS = "envfactory_verl_tool.EnvfactoryTool"
PROP_KEYS = {"type", "description", "enum"}
VERL_VERSION = "0.9.1"  # the version the trainer tests run (tests/trainers/venvs.py)

# One tool round's framing in verl's hermes format: <tool_call> tags, end of turn, tool turn,
# <tool_response> tags, next assistant header (ChatML with hermes tags: 119 bytes; Qwen3 adds an
# empty think block to assistant turns). Lengths are measured by `lengths.measure`.
TURN_TEMPLATE_BYTES = 160


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
                       "tool_selection": list(t["tools"]),
                       "tools_kwargs": {n: {"create_kwargs": create} for n in tool_names}},
    }


def measure_budget(dest: Path, tasks: list[dict], tool_schemas: list[dict]) -> Lengths:
    """The longest prompt and reference episode. The prompt counts every tool schema of
    tool_config.yaml: verl's RLHFDataset measures prompts with all of them listed."""
    return measure(dest, tasks, lambda t: tool_schemas, TURN_TEMPLATE_BYTES)


def _config(src: InputBundle, n_train: int, limit: int, budget: Lengths) -> dict:
    """The Hydra config main_ppo reads (`--config-name=verl_config`): verl's ppo_trainer plus
    these settings. `???` marks the paths run_verl.sh passes and the model the user names."""
    batch = min(16, n_train)
    most_calls = max(t["min_tool_calls"] for t in src.tasks)
    multi_turn = {"enable": True, "tool_config_path": "???", "format": "hermes", "max_tool_response_length": limit,
                  "tool_response_truncate_side": "middle", "max_parallel_calls": 1,
                  "max_assistant_turns": 2 * most_calls + 2}
    return {
        "hydra": {"searchpath": ["pkg://verl.trainer.config"]},
        "defaults": ["ppo_trainer", "_self_"],
        "algorithm": {"adv_estimator": "grpo", "use_kl_in_reward": False},
        "data": {"train_files": "???", "val_files": "???", "return_raw_chat": True,
                 "max_prompt_length": budget.max_prompt_tokens, "max_response_length": budget.max_episode_tokens,
                 "filter_overlong_prompts": True, "truncation": "error", "train_batch_size": batch},
        "actor_rollout_ref": {
            "model": {"path": "???"},
            "actor": {"ppo_mini_batch_size": batch, "ppo_micro_batch_size_per_gpu": 1, "use_kl_loss": False},
            "ref": {"log_prob_micro_batch_size_per_gpu": 1},
            "rollout": {"name": "vllm", "mode": "async", "n": 8, "tensor_model_parallel_size": 1,
                        "prompt_length": budget.max_prompt_tokens, "response_length": budget.max_episode_tokens,
                        "log_prob_micro_batch_size_per_gpu": 1, "multi_turn": multi_turn},
        },
        "reward": {"custom_reward_function": {"path": "???", "name": "compute_score"}},
        "trainer": {"n_gpus_per_node": 1, "nnodes": 1, "logger": ["console"], "project_name": "envfactory",
                    "experiment_name": "-".join(["verl", *src.seeds])},
    }


def _config_text(config: dict, budget: Lengths) -> str:
    header = f"""\
# verl {VERL_VERSION} config for this export: verl's ppo_trainer plus the settings below.
# Run it with run_verl.sh, which passes the four file paths marked ??? (absolute, for Ray's workers)
# and your overrides; those must name the model (???), e.g. actor_rollout_ref.model.path=Qwen/Qwen3-0.6B.
#
# Token limits, measured on this export in UTF-8 bytes at {BYTES_PER_TOKEN} token per byte (a bound for
# byte-level BPE tokenizers, not an average; measured with your model's tokenizer, they may be lowered):
#   max_prompt_length {budget.max_prompt_tokens}: longest prompt {budget.prompt_bytes} bytes ({budget.prompt_task}):
#     its messages, every tool schema of tool_config.yaml and {PROMPT_TEMPLATE_BYTES} bytes of chat template;
#   max_response_length {budget.max_episode_tokens}: longest reference episode {budget.episode_bytes} bytes
#     ({budget.episode_task}): tool calls, tool outputs, final answer, {TURN_TEMPLATE_BYTES} bytes of framing
#     per turn, times {HEADROOM} headroom. A model's own reasoning text is not in it: add room
#     for that, or set data.apply_chat_template_kwargs.enable_thinking=false where the template has it.
# rollout.prompt_length/response_length repeat them (verl's own defaults are 512 each).
# Batch: data.train_batch_size x rollout.n trajectories per step must divide by the GPU count.
"""
    return header + yaml.safe_dump(config, sort_keys=False, width=100)


RUN_PATHS = (("data.train_files", "train.parquet"), ("data.val_files", "{val}"),
             ("actor_rollout_ref.rollout.multi_turn.tool_config_path", "tool_config.yaml"),
             ("reward.custom_reward_function.path", "reward.py"))


def _run_script(val_file: str) -> str:
    paths = "".join(f'    {key}="$HERE/{rel.format(val=val_file)}" \\\n' for key, rel in RUN_PATHS)
    return (
        "#!/usr/bin/env bash\n"
        f"# Train with verl {VERL_VERSION} on this export:\n"
        "#   bash run_verl.sh actor_rollout_ref.model.path=Qwen/Qwen3-0.6B [more Hydra overrides]\n"
        "# Settings: verl_config.yaml beside this script. PYTHON picks the interpreter (default python3).\n"
        "set -euo pipefail\n"
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n'
        "# tool_config.yaml names envfactory_verl_tool.EnvfactoryTool: importable from here (Ray's workers on\n"
        "# this machine inherit PYTHONPATH; on a multi-node cluster, make this directory importable on every node)\n"
        'export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"\n'
        'exec "${PYTHON:-python3}" -m verl.trainer.main_ppo --config-path="$HERE" --config-name=verl_config \\\n'
        + paths
        + '    "$@"\n'
    )


def _usage(names: list[str], limit: int, budget: Lengths, batch: int) -> str:
    return f"""
```bash
bash run_verl.sh actor_rollout_ref.model.path=Qwen/Qwen3-0.6B
```

**verl versions.** Written for and tested with verl {VERL_VERSION}: the envfactory test suite runs
verl's own `RLHFDataset` on these parquet files, loads `tool_config.yaml` with
`initialize_tools_from_config`, drives `ToolAgentLoop` (verl's tool parsing, tool execution
and response masks) through the reference tool calls, scores the episodes with verl's reward
loading and `reward.py`, and passes `verl_config.yaml` through `main_ppo`'s config validation.
verl 0.8.0 and 0.9.0 have every key of `verl_config.yaml` and read the two settings that matter
as 0.9.1 does (checked in their source, not run): `reward.custom_reward_function` (verl >= 0.9
ignores the top-level `custom_reward_function` of older exports; 0.7-0.8 copied it over) and
`extra_info.tool_selection` (before 0.8 every row's model sees all {len(names)} tools; a call
outside its task answers an error).

`run_verl.sh` runs `verl.trainer.main_ppo --config-name=verl_config` with this directory's
absolute paths; `verl_config.yaml` extends verl's `ppo_trainer` with: GRPO, 8 rollouts per
prompt, `train_batch_size: {batch}`, vLLM rollout on 1 GPU (`trainer.n_gpus_per_node=8` etc. to
scale; batch x 8 must divide by the GPU count), `ToolAgentLoop` (`agent_name: tool_agent`, hermes
tool calls) with `tool_config.yaml` ({len(names)} tools, class `{TOOL_CLASS}`, found through
`PYTHONPATH`), `max_tool_response_length: {limit}` (verl's default of 256 would cut tool results),
and `reward.custom_reward_function.path=reward.py` (`compute_score` parses the last JSON object of
the response and runs the task's verifier: 1 only if every check passes; verl never calls a
tool's `calc_reward`, the episode is scored once, at its end).

**Lengths.** `max_prompt_length: {budget.max_prompt_tokens}` and `max_response_length:
{budget.max_episode_tokens}` (also the rollout's `prompt_length`/`response_length`; verl's defaults
of 512 cut the prompt and stop an episode after a few tool calls) come from this export: the
longest prompt is {budget.prompt_bytes} bytes with every tool schema and the chat template, the
longest reference episode {budget.episode_bytes} bytes (tool calls, tool outputs, final answer),
given {HEADROOM}x headroom, at 1 token per UTF-8 byte. That is a bound for byte-level BPE
tokenizers, not an average: a real tokenizer makes more than one byte per token (how many depends
on it; ids and digits are often one token per character), so measured with your model's
tokenizer both may be lowered. A thinking model's reasoning needs room on top.

Each row's `extra_info.tool_selection` lists its task's own tools (verl shows the model only
those), `extra_info.tools_kwargs` names the task for the tool class, and
`reward_model.ground_truth` is JSON text `{{"task_id", "reference_answer"}}`; the reference is
one feasible plan among `extra_info.solution_count`, so scoring runs the verifier rather than
comparing with it.
"""


def write(src: InputBundle, dest: Path, splits: dict) -> dict:
    schemas = union_schemas(src)
    names = [s["function"]["name"] for s in schemas]
    narrowed = [narrow_schema(s) for s in schemas]
    rows = task_rows(src, splits)
    files = {}
    for split, rs in rows.items():
        if rs:
            pq.write_table(pa.Table.from_pylist([_row(t, names) for t in rs]), dest / f"{split}.parquet",
                           compression="zstd")
            files[split] = f"{split}.parquet"
    tool_config = {"tools": [{"class_name": TOOL_CLASS, "config": {"type": "native"}, "tool_schema": s}
                             for s in narrowed]}
    (dest / "tool_config.yaml").write_text(yaml.safe_dump(tool_config, sort_keys=False, width=100), encoding="utf-8")
    limit = max_tool_chars(src)
    write_settings(dest, {"target": "verl", "max_tool_response_chars": limit})
    copy_envs(src, dest)
    copy_runtime(dest, "envfactory_verl_tool.py", "reward.py")
    (dest / "requirements.txt").write_text(
        "# What the shipped modules import besides verl (tested: verl " + VERL_VERSION + "); the DuckDB floor is the\n"
        "# release that wrote envs/*/db/sandbox.duckdb (older DuckDB cannot open it).\n"
        + duckdb_requirement(src) + "\n", encoding="utf-8")
    budget = measure_budget(dest, src.tasks, narrowed)
    config = _config(src, len(rows.get("train", [])), limit, budget)
    (dest / "verl_config.yaml").write_text(_config_text(config, budget), encoding="utf-8")
    (dest / "run_verl.sh").write_text(_run_script(files.get("test", files["train"])), encoding="utf-8")
    lengths = {"max_prompt_length": budget.max_prompt_tokens, "max_response_length": budget.max_episode_tokens,
               "prompt_bytes": budget.prompt_bytes, "response_bytes": budget.episode_bytes,
               "bytes_per_token": BYTES_PER_TOKEN}
    write_settings(dest, {"target": "verl", "max_tool_response_chars": limit, "verl": VERL_VERSION, **lengths})
    usage = _usage(names, limit, budget, config["data"]["train_batch_size"])
    write_card(dest, "verl", src, splits, usage, dict(files), limit)
    return {"max_tool_response_chars": limit, "tools": names, "data_files": files, **lengths}


register("verl", write, "verl ToolAgentLoop: parquet with per-row tool selection, tool_config.yaml, "
                        "request-keyed BaseTool, compute_score, a main_ppo config that passes verl's validation")
