"""Token limits for trainer configs, measured from an export without the user's tokenizer.

Trainers cut prompts and episodes at token limits whose defaults (512 in verl and TRL) are far
below what a task needs: a prompt lists the tools, and an episode carries every tool output.
`measure` replays each task's reference tool calls on the runtime shipped in the export and
counts UTF-8 bytes: the longest prompt (messages, the tool schemas the trainer lists, a chat
template allowance) and the longest reference episode (tool calls, tool outputs, the final
answer, a per-turn framing allowance). Bytes become tokens by a bound, not an average: a
byte-level BPE tokenizer (Qwen, Llama 3, DeepSeek, GPT-2) never makes more tokens of a text
than it has bytes, and each special token of a chat template is several bytes of text. Real
tokenizers make 2-4 bytes per token of this JSON-heavy text, so a user who measures with theirs
may lower the limits; a thinking model needs room for its reasoning on top.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BYTES_PER_TOKEN", "HEADROOM", "PROMPT_TEMPLATE_BYTES", "ROUND_TO", "Lengths", "measure", "nbytes"]

BYTES_PER_TOKEN = 1
# A chat template's own text around the messages and the tools block (the test suite's ChatML
# template: 259 bytes).
PROMPT_TEMPLATE_BYTES = 1024
HEADROOM = 1.5  # a policy's episode may call more or other tools than the reference
ROUND_TO = 512


@dataclass(frozen=True)
class Lengths:
    """The longest prompt and the longest reference episode of an export, in UTF-8 bytes, and
    the token limits that follow from them."""

    prompt_bytes: int  # messages + tool schemas + chat template allowance
    episode_bytes: int  # tool calls + tool outputs + final answer + per-turn framing
    prompt_task: str
    episode_task: str
    most_tool_calls: int  # the most reference tool calls of one task

    @property
    def max_prompt_tokens(self) -> int:
        return round_up(self.prompt_bytes / BYTES_PER_TOKEN)

    @property
    def max_episode_tokens(self) -> int:
        return round_up(self.episode_bytes * HEADROOM / BYTES_PER_TOKEN)


def round_up(n: float) -> int:
    return ROUND_TO * math.ceil(n / ROUND_TO)


def nbytes(obj) -> int:
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return len(text.encode("utf-8"))


def _shipped_runtime(dest: Path):
    spec = importlib.util.spec_from_file_location(f"_envfactory_runtime_lengths_{abs(hash(str(dest)))}",
                                                  dest / "envfactory_runtime.py")
    mod = importlib.util.module_from_spec(spec)
    exec(compile(Path(spec.origin).read_bytes(), spec.origin, "exec"), mod.__dict__)  # writes no __pycache__
    return mod.Runtime(dest)


def measure(dest: Path, tasks: list[dict], prompt_schemas: Callable[[dict], list[dict]],
            turn_bytes: int) -> Lengths:
    """Replay every task's reference tool calls on the runtime shipped in `dest`.
    `prompt_schemas(task)` is the tool schemas the trainer renders into that task's prompt;
    `turn_bytes` the chat template's framing of one tool round in that trainer."""
    rt = _shipped_runtime(dest)
    prompts, episodes = {}, {}
    for t in tasks:
        tools = sum(nbytes(s) + 1 for s in prompt_schemas(t))
        prompts[t["task_id"]] = sum(nbytes(m["content"]) for m in t["messages"]) + tools + PROMPT_TEMPLATE_BYTES
        key = f"measure-{t['task_id']}"
        episode = rt.start(key, t["task_id"])
        turns = [nbytes({"name": c["name"], "arguments": c["arguments"]})
                 + nbytes(episode.call(c["name"], c["arguments"])) for c in t["reference_tool_calls"]]
        rt.release(key)
        turns.append(nbytes(t["reference_answer"]))
        episodes[t["task_id"]] = sum(turns) + turn_bytes * len(turns)
    p, e = max(prompts, key=prompts.get), max(episodes, key=episodes.get)
    return Lengths(prompts[p], episodes[e], p, e, max(len(t["reference_tool_calls"]) for t in tasks))
