"""envfactory runtime: the environments of one export, their tools, episodes and scoring.

Shipped verbatim into every export (standard library plus duckdb), so an export runs
without the factory installed. Layout it reads, relative to this file:

    export.json                  {"max_tool_response_chars": N, ...}   (optional)
    envs/<env_id>/db/sandbox.duckdb
    envs/<env_id>/tools/tools.py, tool_schemas.json
    envs/<env_id>/verifiers/<task_id>.py
    envs/<env_id>/tasks/tasks.jsonl

An `Episode` is one rollout's state: its task, the tool calls made (with their outputs'
sizes) and the submitted answer with its score. Tools are read-only queries on a shared
read-only sandbox, so episodes cannot see each other through the database; what an episode
keeps is its own task, call log and submission. Every tool output is kept under
`max_tool_response_chars` (an over-long result becomes a short error asking to narrow the
query), the length the trainer configs in the export declare.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

__all__ = ["DEFAULT_MAX_TOOL_RESPONSE_CHARS", "Env", "Episode", "Runtime", "extract_answer"]

DEFAULT_MAX_TOOL_RESPONSE_CHARS = 4000
MAX_EPISODES = 10000  # oldest episodes are dropped past this many (trainers never say when one ends)

_BLOCKS = re.compile(r"<think>.*?</think>|<tool_call>.*?</tool_call>|<tool_response>.*?</tool_response>", re.DOTALL)


def _load_module(path: Path, prefix: str):
    name = f"_{prefix}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _is_tool_traffic(obj: dict) -> bool:
    """Tool calls ({"name", "arguments"}) and tool results ({"results"} / {"error"}) echoed in a transcript."""
    keys = set(obj)
    return keys == {"name", "arguments"} or keys == {"results"} or keys == {"error"}


def extract_answer(text):
    """The final answer in a model's response: the last top-level JSON object that is not
    tool traffic, after removing reasoning (`<think>`), tool calls and tool responses.
    A dict passes through; None when nothing is found."""
    if isinstance(text, dict):
        return text
    if not isinstance(text, str):
        return None
    text = _BLOCKS.sub(" ", text)
    if "</think>" in text:  # chat templates that pre-fill the opening <think> tag
        text = text.rsplit("</think>", 1)[1]
    decoder, found, i = json.JSONDecoder(), None, 0
    while True:
        j = text.find("{", i)
        if j < 0:
            return found
        try:
            obj, end = decoder.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        if isinstance(obj, dict) and not _is_tool_traffic(obj):
            found = obj
        i = end


class Env:
    """One environment directory: tasks, tools bound to its read-only sandbox, verifiers."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.env_id = self.root.name
        lines = (self.root / "tasks" / "tasks.jsonl").read_text(encoding="utf-8").splitlines()
        self.tasks = {r["task_id"]: r for r in map(json.loads, filter(None, lines))}
        schemas = json.loads((self.root / "tools" / "tool_schemas.json").read_text(encoding="utf-8"))
        self.schemas = {s["function"]["name"]: s for s in schemas}
        self._tools = None
        self._verifiers = {}
        self._lock = threading.Lock()

    @property
    def db_path(self) -> str:
        return str(self.root / "db" / "sandbox.duckdb")

    def tools(self):
        with self._lock:
            if self._tools is None:
                mod = _load_module(self.root / "tools" / "tools.py", "tools")
                mod.DB_PATH = self.db_path
                self._tools = mod
        return self._tools

    def call(self, name: str, arguments) -> str:
        return self.tools().call(name, arguments)

    def verifier(self, task_id: str):
        with self._lock:
            if task_id not in self._verifiers:
                self._verifiers[task_id] = _load_module(self.root / "verifiers" / f"{task_id}.py", "verifier")
        return self._verifiers[task_id]

    def score(self, task_id: str, answer) -> dict:
        return self.verifier(task_id).verify(answer, self.db_path)


class Episode:
    """One rollout: its task (optional), the tool calls made, the submitted answer."""

    def __init__(self, runtime: Runtime, env: Env, task_id: str | None = None, episode_id: str | None = None):
        self.runtime, self.env = runtime, env
        self.id = episode_id or uuid.uuid4().hex
        self.task = env.tasks[task_id] if task_id else None
        self.calls: list[dict] = []
        self.answer = None
        self.result = None

    @property
    def tool_names(self) -> list[str]:
        """The tools this episode may call: its task's tools, or all of the environment's."""
        return list(self.task["tools"]) if self.task else list(self.env.schemas)

    def call(self, name: str, arguments) -> str:
        if name not in self.tool_names:
            out = json.dumps({"error": f"unknown tool {name!r}; available: {', '.join(self.tool_names)}"})
        else:
            out = self.env.call(name, arguments if arguments is not None else {})
        limit = self.runtime.max_tool_response_chars
        if len(out) > limit:
            out = json.dumps({"error": f"result too large ({len(out)} characters, limit {limit}); narrow the query"})
        self.calls.append({"name": name, "arguments": arguments, "chars": len(out), "error": '"error"' in out[:10]})
        return out

    def submit(self, answer) -> dict:
        """Score an answer (a plan object, JSON text or a whole response) with the task's verifier."""
        if self.task is None:
            raise ValueError("no task in this episode: start one first")
        self.answer = answer
        self.result = self.runtime.score_text(self.task["task_id"], answer)
        return self.result

    def state(self) -> dict:
        return {"episode_id": self.id, "env_id": self.env.env_id,
                "task_id": self.task["task_id"] if self.task else None,
                "tool_calls": len(self.calls), "calls": [c["name"] for c in self.calls],
                "submitted": self.answer is not None,
                "score": self.result["score"] if self.result else None}


class Runtime:
    """All environments of an export (`root/envs/*`), or one environment directory."""

    def __init__(self, root: str | Path | None = None, max_tool_response_chars: int | None = None):
        self.root = Path(root) if root else Path(__file__).resolve().parent
        settings = {}
        if (self.root / "export.json").is_file():
            settings = json.loads((self.root / "export.json").read_text(encoding="utf-8"))
        self.max_tool_response_chars = int(max_tool_response_chars or settings.get("max_tool_response_chars")
                                           or DEFAULT_MAX_TOOL_RESPONSE_CHARS)
        if (self.root / "tasks" / "tasks.jsonl").is_file():
            dirs = [self.root]
        else:
            base = self.root / "envs" if (self.root / "envs").is_dir() else self.root
            dirs = sorted(p for p in base.iterdir() if (p / "tasks" / "tasks.jsonl").is_file())
        self.envs = {d.name: Env(d) for d in dirs}
        self.tasks = {tid: env for env in self.envs.values() for tid in env.tasks}
        self._episodes: OrderedDict[str, Episode] = OrderedDict()
        self._lock = threading.Lock()

    def task(self, task_id: str) -> dict:
        if task_id not in self.tasks:
            raise KeyError(f"unknown task {task_id!r}")
        return self.tasks[task_id].tasks[task_id]

    def env(self, env_id: str | None = None) -> Env:
        if env_id is None:
            if len(self.envs) != 1:
                raise KeyError(f"several environments ({', '.join(self.envs)}); name one")
            return next(iter(self.envs.values()))
        if env_id not in self.envs:
            raise KeyError(f"unknown environment {env_id!r}")
        return self.envs[env_id]

    def tool_schemas(self, env_id: str | None = None) -> list[dict]:
        """OpenAI tool schemas of one environment, or the union over all (by name)."""
        envs = [self.env(env_id)] if env_id else self.envs.values()
        union = {}
        for env in envs:
            for name, schema in env.schemas.items():
                union.setdefault(name, schema)
        return list(union.values())

    def episode(self, key: str | None = None, task_id: str | None = None, env_id: str | None = None) -> Episode:
        """The episode stored under `key`, created (for `task_id`, or an environment) if absent."""
        with self._lock:
            ep = self._episodes.get(key) if key is not None else None
            if ep is None:
                env = self.tasks[task_id] if task_id else self.env(env_id)
                ep = Episode(self, env, task_id, key)
                self._episodes[ep.id] = ep
                while len(self._episodes) > MAX_EPISODES:
                    self._episodes.popitem(last=False)
            else:
                self._episodes.move_to_end(key)
            return ep

    def start(self, key: str, task_id: str) -> Episode:
        """Begin (or restart) the episode under `key` on a task."""
        env = self.tasks.get(task_id)
        if env is None:
            raise KeyError(f"unknown task {task_id!r}")
        with self._lock:
            ep = self._episodes[key] = Episode(self, env, task_id, key)
            self._episodes.move_to_end(key)
            while len(self._episodes) > MAX_EPISODES:
                self._episodes.popitem(last=False)
        return ep

    def release(self, key: str) -> None:
        with self._lock:
            self._episodes.pop(key, None)

    def score_text(self, task_id: str, response) -> dict:
        """Score a response (text holding the answer JSON, or the answer itself) for a task:
        {"score", "checks", "answer"}; 0 with a `format` check when no answer is found."""
        env = self.tasks.get(task_id)
        if env is None:
            raise KeyError(f"unknown task {task_id!r}")
        answer = extract_answer(response)
        if answer is None:
            return {"score": 0.0, "answer": None,
                    "checks": [{"name": "format", "passed": False, "reason": "no JSON object in the response"}]}
        result = env.score(task_id, answer)
        return {"score": float(result["score"]), "checks": result["checks"], "answer": answer}
