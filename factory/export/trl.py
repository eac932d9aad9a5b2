"""trl: a prompt dataset, environment classes for `GRPOTrainer(environment_factory=...)`, a
reward function, a GRPOConfig settings file and a requirements file (TRL 1.16.0;
tests/trainers/test_trl.py trains with TRL's own GRPOTrainer on this output).

TRL builds environment instances, exposes the public methods of their class as tools
(schemas from type hints and Google docstrings), calls `reset(**row_columns)` before a
rollout and hands the instances to reward functions as `environments`. Traps handled (TRL
1.16.0 source, trl/trainer/grpo_trainer.py):
- per-task tool lists: a dict `environment_factory` routes each row by its `environment`
  column and renders only that environment's tools into the prompt, so the generated module
  has one class per distinct task tool set (`ENVIRONMENTS`) and each row names its own;
- `max_completion_length` (default 512) counts the tool outputs too, and the tool loop
  silently drops a tool result that would pass it (the rollout just ends), so
  `trl_config.json` sets it from this export's reference episodes (`Lengths`);
- the tools and verifiers need duckdb; without it every tool call would answer an error
  dict that TRL feeds back to the model, so the classes refuse to construct instead and
  `requirements.txt` installs it, at a version that opens the shipped databases.
"""

from __future__ import annotations

import json
import keyword
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from envfactory.factory.errors import UsageError
from envfactory.factory.export import register
from envfactory.factory.export.common import (
    InputBundle,
    copy_envs,
    copy_runtime,
    duckdb_requirement,
    json_text,
    max_tool_chars,
    py_annotation,
    render,
    task_rows,
    union_schemas,
    write_card,
    write_settings,
)
from envfactory.factory.export.lengths import BYTES_PER_TOKEN, HEADROOM, Lengths, measure

__all__ = ["TURN_TEMPLATE_BYTES", "measure_lengths", "render_env_module", "toolsets",
           "write"]

TRL_VERSION = "1.16.0"  # the version tests/trainers/test_trl.py trains with
TRANSFORMERS_FLOOR = "5.13"  # why: see REQUIREMENTS below
MODULE = "envfactory_trl_env.py"
RESERVED = {"reset", "get_reward"}  # TRL's own hooks on an environment class, never tools

# One tool round's framing in TRL's tool loop: end of turn, tool turn and <tool_response> tags.
# Lengths are measured by `lengths.measure`.
TURN_TEMPLATE_BYTES = 128


def max_tool_calling_iterations(lengths: Lengths) -> int:
    return 2 * lengths.most_tool_calls


def _identifier(name: str, what: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_") or name in RESERVED | {"self"}:
        raise UsageError(f"{what} {name!r} cannot be a method of a TRL environment (TRL exposes public methods "
                         f"by name; reset/get_reward are its own hooks)")
    return name


def _one_line(text: str) -> str:
    """Docstring-safe text on one line (TRL reads the Google docstring to build the schema)."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _tool_view(schema: dict) -> dict:
    fn = schema["function"]
    name = _identifier(fn["name"], "tool")
    params = fn.get("parameters") or {}
    required = set(params.get("required", []))
    view = []
    for p, prop in params.get("properties", {}).items():
        annotation = py_annotation(name, _identifier(p, f"argument of {name}"), prop)
        view.append({"name": p, "required": p in required, "description": _one_line(prop.get("description", p)),
                     "annotation": annotation if p in required else f"{annotation} | None"})
    return {"name": name, "description": _one_line(fn.get("description", name)), "params": view,
            "optional": any(not p["required"] for p in view)}


def toolsets(tasks: list[dict]) -> list[dict]:
    """One entry per distinct task tool set: {key, cls, tools, tasks}; key is the row's
    `environment` value (the sorted tool names joined by '+')."""
    by_key: dict[str, list[str]] = {}
    for t in tasks:
        tools = sorted(set(t["tools"]))
        by_key.setdefault("+".join(tools), tools)
    counts = {k: sum("+".join(sorted(set(t["tools"]))) == k for t in tasks) for k in by_key}
    return [{"key": k, "cls": f"EnvfactoryTools{i}", "tools": by_key[k], "tasks": counts[k]}
            for i, k in enumerate(sorted(by_key), 1)]


def render_env_module(dest: Path, schemas: list[dict], tasks: list[dict] = ()) -> Path:
    """Write the environment module for these tool schemas and tasks (its `ENVIRONMENTS` has one
    class per distinct task tool set) to `dest`."""
    views = [_tool_view(s) for s in schemas]
    names = {v["name"] for v in views}
    sets = toolsets(list(tasks))
    for ts in sets:
        unknown = [t for t in ts["tools"] if t not in names]
        if unknown:
            raise UsageError(f"tasks name tools without a schema: {unknown}")
    render(f"{MODULE}.j2", dest, tools=views, all_tools=[v["name"] for v in views], toolsets=sets)
    return dest


def measure_lengths(dest: Path, tasks: list[dict], schemas: list[dict]) -> Lengths:
    """The longest prompt (with the task's own tool schemas, as TRL renders a routed row) and
    the longest reference episode."""
    by_name = {s["function"]["name"]: s for s in schemas}
    return measure(dest, tasks, lambda t: [by_name[n] for n in t["tools"]], TURN_TEMPLATE_BYTES)


def _requirements(duckdb: str) -> str:
    return f"""\
# pip install -r requirements.txt
# The shipped modules (envfactory_trl_env.py, envfactory_runtime.py, envs/*/tools/tools.py,
# envs/*/verifiers/*.py) import the standard library and duckdb only. The version floor is that
# of the DuckDB that wrote envs/*/db/sandbox.duckdb: older DuckDB cannot open a newer database.
{duckdb}
# Training as README.md shows, tested with trl {TRL_VERSION} and transformers 5.24.0. TRL marks
# environment_factory experimental (it may change between releases), hence the pin to 1.16.x.
# TRL refuses environment_factory below transformers 5.2; below {TRANSFORMERS_FLOOR} it parses tool calls
# with the older `response_schema` mechanism, which also needs jmespath and is not tested here.
trl>={TRL_VERSION},<1.17
transformers>={TRANSFORMERS_FLOOR}
"""


def _row(t: dict) -> dict:
    return {"prompt": [{"role": m["role"], "content": m["content"]} for m in t["messages"]],
            "environment": "+".join(sorted(set(t["tools"]))),
            "task_id": t["task_id"], "env_id": t["env_id"], "seed": t["seed"], "level": t["level"],
            "solution_count": t["solution_count"], "min_tool_calls": t["min_tool_calls"],
            "tools": list(t["tools"]), "reference_answer": json_text(t["reference_answer"])}


def grpo_settings(lengths: Lengths) -> dict:
    """The GRPOConfig keyword arguments of trl_config.json."""
    return {"max_completion_length": lengths.max_episode_tokens,
            "max_tool_calling_iterations": max_tool_calling_iterations(lengths),
            "remove_unused_columns": False}


def write(src: InputBundle, dest: Path, splits: dict) -> dict:
    schemas = union_schemas(src)
    files = {}
    for split, rs in task_rows(src, splits).items():
        if rs:
            pq.write_table(pa.Table.from_pylist([_row(t) for t in rs]), dest / f"{split}.parquet", compression="zstd")
            files[split] = f"{split}.parquet"
    render_env_module(dest / MODULE, schemas, src.tasks)
    limit = max_tool_chars(src)
    write_settings(dest, {"target": "trl", "max_tool_response_chars": limit})
    copy_envs(src, dest)
    copy_runtime(dest)
    lengths = measure_lengths(dest, src.tasks, schemas)
    settings = grpo_settings(lengths)
    (dest / "trl_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    duckdb = duckdb_requirement(src)
    (dest / "requirements.txt").write_text(_requirements(duckdb), encoding="utf-8")
    sets = toolsets(src.tasks)
    info = {"max_tool_response_chars": limit, "tools": [s["function"]["name"] for s in schemas],
            "data_files": files, "trl": TRL_VERSION, "grpo_config": settings, "environments": len(sets),
            "prompt_bytes": lengths.prompt_bytes, "completion_bytes": lengths.episode_bytes,
            "max_prompt_tokens": lengths.max_prompt_tokens, "bytes_per_token": BYTES_PER_TOKEN,
            "requirements": [duckdb, f"trl>={TRL_VERSION},<1.17", f"transformers>={TRANSFORMERS_FLOOR}"]}
    write_settings(dest, {"target": "trl", **info})
    write_card(dest, "trl", src, splits, _usage(files, limit, lengths, sets), files)
    return info


def _usage(files: dict, limit: int, lengths: Lengths, sets: list[dict]) -> str:
    data_files = ", ".join(f'"{s}": str(EXPORT / "{f}")' for s, f in files.items())
    eval_arg = ', eval_dataset=data["test"]' if "test" in files else ""
    return f"""
```bash
pip install -r requirements.txt   # duckdb (the tools and verifiers query it), trl, transformers
```

```python
import json, sys
from pathlib import Path

EXPORT = Path("PATH/TO/THIS/EXPORT")
sys.path.insert(0, str(EXPORT))
from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer
from envfactory_trl_env import ENVIRONMENTS, envfactory_reward

data = load_dataset("parquet", data_files={{{data_files}}})
settings = json.loads((EXPORT / "trl_config.json").read_text())
trainer = GRPOTrainer(model="Qwen/Qwen3-0.6B", train_dataset=data["train"]{eval_arg},
                      environment_factory=ENVIRONMENTS, reward_funcs=[envfactory_reward],
                      args=GRPOConfig(output_dir="grpo-envfactory", **settings))
trainer.train()
```

**Versions.** Written for and tested with TRL {TRL_VERSION} (transformers 5.24.0): the envfactory
test suite runs TRL's own `GRPOTrainer` on this layout with a small local model for two
training steps, its tool calls executed by these classes. `environment_factory` needs
transformers >= 5.2 (TRL refuses it below); `requirements.txt` asks for >= {TRANSFORMERS_FLOOR}, where TRL parses
tool calls with transformers' `response_template` (below, it uses the older `response_schema`,
which needs `jmespath`; not tested). TRL calls `environment_factory` experimental: other TRL
versions are not tested. The model's chat template must support tool calls (TRL checks it and
knows Qwen3, Qwen2.5, Llama 3.1/3.2, GPT-OSS and a few more).

**Tools per task.** `ENVIRONMENTS` has one class per distinct tool set of the tasks ({len(sets)} here);
each row's `environment` column names its task's set, and TRL shows the model only those tools.
`EnvfactoryEnv` is the single-class alternative (`environment_factory=EnvfactoryEnv`): every tool
of the export in every prompt, and a call to a tool outside the row's task answers an error.
Without duckdb the classes refuse to construct (TRL builds one when the trainer starts).

**Settings.** `trl_config.json` holds the GRPOConfig values this export needs:
`max_completion_length: {lengths.max_episode_tokens}` (TRL's default of 512 counts the tool outputs too,
and TRL silently drops a tool result that would pass it, ending the episode): the longest
reference episode ({lengths.episode_task}) is {lengths.episode_bytes} bytes of tool calls, tool outputs
and final answer with {TURN_TEMPLATE_BYTES} bytes of framing per turn, times {HEADROOM} headroom, at one token
per UTF-8 byte. That is a bound for byte-level BPE tokenizers, not an average: with your model's
tokenizer (2-4 bytes per token on this text) about half fits, and a thinking model's reasoning
needs room on top. `max_tool_calling_iterations: {max_tool_calling_iterations(lengths)}` is twice the most tool calls of
one reference episode; `remove_unused_columns: false` keeps the `task_id` column that `reset`
and the reward read. The longest prompt, with its task's tool schemas, is {lengths.prompt_bytes}
bytes ({lengths.prompt_task}); the model's context must hold it plus `max_completion_length`
(TRL also drops a tool result that would reach the context length). Every tool output is at
most {limit} characters (the runtime turns a longer result into a short error).

**Reward.** `envfactory_reward` scores the last assistant message of each completion with the task's
generated verifier: 1.0 only if every check passes, else 0.0 (junk, a missing answer or an
unreadable completion included; it never raises). The failed checks' reasons appear in TRL's
completions table as `envfactory_reason`, and the share of tool calls that answered an error as
the metric `envfactory/tool_error_rate`.

Columns: `prompt` (system + user messages), `environment` (the task's tool set, for routing),
`task_id`, `env_id`, `seed`, `level`, `solution_count`, `min_tool_calls`, `tools` (the task's
tools), `reference_answer` (JSON text; one feasible plan among `solution_count`).
"""


register("trl", write, "TRL GRPOTrainer: prompt dataset, per-task-tool environment classes, reward function, "
                       "GRPOConfig settings, requirements")
