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
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

__all__ = ["DEFAULT_MAX_TOOL_RESPONSE_CHARS", "MAX_ANSWER_DEPTH", "MAX_RESPONSE_CHARS", "Env", "Episode",
           "Runtime", "answer_problem", "extract_answer", "final_text"]

DEFAULT_MAX_TOOL_RESPONSE_CHARS = 4000
MAX_EPISODES = 10000  # oldest episodes are dropped past this many (trainers never say when one ends)
# Hostile completions are scored 0 with a reason, never an exception, in bounded time. A whole
# multi-turn transcript with every tool output is far below 1M characters (a reference
# trajectory: 3-6K); a plan is a few levels deep (answer -> days -> day -> fields).
MAX_RESPONSE_CHARS = 1_000_000
MAX_ANSWER_DEPTH = 32
MAX_DECODE_ATTEMPTS = 20_000  # JSON parse attempts at "{" positions before giving up on a response
EXTRACT_BUDGET_S = 2.0

_TAGS = (("<think>", "</think>"), ("<tool_call>", "</tool_call>"), ("<tool_response>", "</tool_response>"))


def _load_module(path: Path, prefix: str):
    """A generated module (tools, a verifier) by path, compiled from source here: the import
    system's loader would write __pycache__/ beside it, into a bundle whose manifest lists every
    file (`factory serve` runs this runtime on a bundle directory, and a later `factory export`
    of it would then refuse the bundle)."""
    name = f"_{prefix}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(path.read_bytes(), str(path), "exec"), mod.__dict__)  # noqa: S102  (the export's own code)
    return mod


def _is_tool_traffic(obj: dict) -> bool:
    """Tool calls ({"name", "arguments"}) and tool results ({"results"} / {"error"}) echoed in a transcript."""
    keys = set(obj)
    return keys == {"name", "arguments"} or keys == {"results"} or keys == {"error"}


def _strip_blocks(text: str) -> str:
    """Remove <think>, <tool_call> and <tool_response> blocks in one linear pass (a regex with
    lazy DOTALL groups is quadratic on many unclosed tags)."""
    out, i, n = [], 0, len(text)
    open_at = {o: text.find(o) for o, _ in _TAGS}
    while i < n:
        live = [(p, o) for o, p in open_at.items() if p >= 0]
        if not live:
            break
        p, o = min(live)
        close = dict(_TAGS)[o]
        end = text.find(close, p + len(o))
        if end < 0:  # unclosed: no later block of this kind closes either
            open_at[o] = -1
            continue
        out.append(text[i:p])
        out.append(" ")
        i = end + len(close)
        for o2 in open_at:
            if 0 <= open_at[o2] < i:
                open_at[o2] = text.find(o2, i)
    out.append(text[i:])
    return "".join(out)


def _depth_exceeds(obj, limit: int) -> bool:
    """Whether a parsed JSON value nests deeper than `limit` (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def answer_problem(answer) -> str | None:
    """Why a parsed answer cannot be scored at all (too deep), or None."""
    if _depth_exceeds(answer, MAX_ANSWER_DEPTH):
        return f"answer nests deeper than {MAX_ANSWER_DEPTH} levels"
    return None


def _as_text(response) -> tuple[str | None, str | None]:
    """(text, None) or (None, why the response is not scorable text)."""
    if isinstance(response, (bytes, bytearray, memoryview)):
        if len(response) > 4 * MAX_RESPONSE_CHARS:
            return None, f"response too long ({len(response)} bytes, limit {MAX_RESPONSE_CHARS} characters)"
        try:
            response = bytes(response).decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"response is not valid UTF-8 ({e.reason} at byte {e.start})"
    if not isinstance(response, str):
        return None, f"response is {type(response).__name__}, not text"
    if len(response) > MAX_RESPONSE_CHARS:
        return None, f"response too long ({len(response)} characters, limit {MAX_RESPONSE_CHARS})"
    return response, None


def extract_answer(text):
    """The final answer in a model's response: the last top-level JSON object that is not
    tool traffic, after removing reasoning (`<think>`), tool calls and tool responses.
    A dict passes through; None when nothing is found (or the text is not scorable)."""
    return _extract(text)[0]


def _extract(text):
    """(answer or None, reason when None)."""
    if isinstance(text, dict):
        return text, None
    text, why = _as_text(text)
    if text is None:
        return None, why
    text = _strip_blocks(text)
    if "</think>" in text:  # chat templates that pre-fill the opening <think> tag
        text = text.rsplit("</think>", 1)[1]
    decoder, found, i, attempts = json.JSONDecoder(), None, 0, 0
    deadline = time.monotonic() + EXTRACT_BUDGET_S
    why = "no JSON object in the response"
    while True:
        j = text.find("{", i)
        if j < 0:
            return found, (None if found is not None else why)
        attempts += 1
        if attempts > MAX_DECODE_ATTEMPTS or (attempts % 256 == 0 and time.monotonic() > deadline):
            return None, "response too complex to parse (too many JSON fragments)"
        try:
            obj, end = decoder.raw_decode(text, j)
        except RecursionError:
            why = f"answer nests deeper than {MAX_ANSWER_DEPTH} levels"
            i = j + 1
            continue
        except ValueError:
            i = j + 1
            continue
        if isinstance(obj, dict) and not _is_tool_traffic(obj):
            found = obj
        i = end


def _field(m, name):
    return m.get(name) if isinstance(m, dict) else getattr(m, name, None)


def _content_text(content) -> str:
    """A message's content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = [_field(p, "text") if _field(p, "type") in ("text", "output_text", None) else None for p in content]
        return "".join(p if isinstance(p, str) else "" for p in parts)
    return ""


def final_text(completion) -> str:
    """The text of the last assistant message of a completion: a string, a message, or a list
    of messages as dicts or objects with `role` / `content` (pydantic messages), the content a
    string or a list of {"type": "text", "text"} parts. "" when there is none."""
    if isinstance(completion, (str, bytes, bytearray)):
        return completion if isinstance(completion, str) else _as_text(completion)[0] or ""
    try:
        messages = [completion] if _field(completion, "role") is not None else list(completion)
    except TypeError:
        return ""
    for m in reversed(messages):
        if _field(m, "role") == "assistant":
            return _content_text(_field(m, "content"))
    return ""


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

    def get(self, key: str) -> Episode | None:
        """The episode stored under `key`, or None (never creates one)."""
        with self._lock:
            return self._episodes.get(key)

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
        {"score", "checks", "answer"}. Never raises: an unknown task, a response that is not
        scorable text (not a string, invalid UTF-8, over MAX_RESPONSE_CHARS), no answer, an
        answer nested too deep, or a verifier that fails all score 0 with a named reason."""
        try:
            env = self.tasks.get(task_id) if isinstance(task_id, str) else None
            if env is None:
                return _zero("task", f"unknown task {str(task_id)[:200]!r}")
            answer, why = _extract(response)
            if answer is None:
                return _zero("format", why)
            why = answer_problem(answer)
            if why:
                return _zero("format", why)
            result = env.score(task_id, answer)
            return {"score": float(result["score"]), "checks": result["checks"], "answer": answer}
        except Exception as e:  # a reward never raises; RecursionError and MemoryError included
            return _zero("error", f"scoring failed: {type(e).__name__}: {str(e)[:300]}")


def _zero(name: str, reason: str) -> dict:
    return {"score": 0.0, "answer": None, "checks": [{"name": name, "passed": False, "reason": reason}]}
