"""A chat runtime for any OpenAI-compatible server (vLLM, SGLang, llama.cpp, DeepSeek's API),
over httpx.

- `ChatClient.complete(messages, tools, response_format)`: one completion, streamed or not,
  with a timeout, and retries with exponential backoff on connection errors, 429 and 5xx
  (honouring Retry-After). Reasoning comes back from either `reasoning_content` (DeepSeek,
  vLLM, SGLang) or `reasoning` (llama.cpp, OpenRouter).
- `Conversation`: the message history. What goes on the wire follows V3.2's rule for
  thinking with tools: an assistant turn keeps its reasoning while the current user request
  lasts (across any number of tool results) and loses it once a new user message arrives;
  the tool calls and their results are always kept.
- Context management when the window fills (estimated from the server's own token counts,
  else characters / 4), selectable: `summary` (the model summarises its trajectory, which
  restarts from that summary), `discard-75` (drop the oldest 75% of tool-call rounds),
  `discard-all` (drop every tool-call round), and `parallel-fewest-step` (run several
  rollouts independently; the finished one with the fewest steps wins), or `none`.
- `run_tools(...)`: the tool loop. A call to an unknown tool, arguments that are not JSON or
  that break the tool's JSON Schema go back to the model as the tool's error and are
  counted; the loop ends on a reply with no tool calls, or at a step limit.
- `decide(...)`: a structured decision: JSON checked against a JSON Schema and a caller's own
  check; invalid output is sent back with the error and retried a bounded number of times,
  never trusted.

Server quirks are handled where they are found, not assumed away: llama.cpp's server
rejects `response_format` of type `json_schema` (it wants `json_object` with a `schema`),
and rejects `content: null` on assistant tool-call messages (sent as "" instead).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

__all__ = ["ChatConfig", "ChatClient", "ChatError", "Reply", "ToolCall", "Usage", "Conversation", "run_tools",
           "ToolRun", "decide", "Decision", "STRATEGIES", "parse_json_reply"]

STRATEGIES = ("none", "summary", "discard-75", "discard-all", "parallel-fewest-step")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ChatError(RuntimeError):
    """The server could not be reached or kept refusing (after the retries), or answered
    something that is not a chat completion."""


@dataclass(frozen=True)
class ChatConfig:
    base_url: str
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 120.0
    retries: int = 4                # retries after the first attempt
    backoff_s: float = 0.5          # first wait; doubles each retry (with jitter), at most max_backoff_s
    max_backoff_s: float = 20.0
    stream: bool = False
    temperature: float | None = None
    max_tokens: int | None = 1024
    context_tokens: int = 32_768    # the window the strategies keep the conversation under
    strategy: str = "discard-all"
    parallel: int = 3               # rollouts for parallel-fewest-step
    json_mode: str = "auto"         # json_schema | json_object | none | auto (json_schema, then json_object)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown context strategy {self.strategy!r} (strategies: {', '.join(STRATEGIES)})")
        if self.json_mode not in ("auto", "json_schema", "json_object", "none"):
            raise ValueError(f"unknown json mode {self.json_mode!r}")


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the raw text the model wrote (may not be JSON)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: int = 0

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.requests += other.requests
        self.retries += other.retries

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Reply:
    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    finish_reason: str | None
    usage: Usage


# ------------------------------------------------------------------------------ the client


class ChatClient:
    """One server. Thread-safe: a client may serve parallel rollouts."""

    def __init__(self, cfg: ChatConfig, transport: httpx.BaseTransport | None = None):
        self.cfg = cfg
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self._http = httpx.Client(base_url=cfg.base_url.rstrip("/") + "/", headers=headers, transport=transport,
                                  timeout=httpx.Timeout(cfg.timeout_s, connect=min(10.0, cfg.timeout_s)))
        self._json_mode = cfg.json_mode
        self._lock = threading.Lock()
        self.usage = Usage()
        self._rng = random.Random(0)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def complete(self, messages: list[dict], tools: list[dict] | None = None,
                 response_format: dict | None = None) -> Reply:
        body: dict = {"messages": _wire_quirks(messages)}
        if self.cfg.model:
            body["model"] = self.cfg.model
        if tools:
            body["tools"] = tools
        if self.cfg.temperature is not None:
            body["temperature"] = self.cfg.temperature
        if self.cfg.max_tokens:
            body["max_tokens"] = self.cfg.max_tokens
        if response_format is not None:
            body["response_format"] = response_format
        if self.cfg.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        reply = self._post(body)
        with self._lock:
            self.usage.add(reply.usage)
        return reply

    def json_format(self, schema: dict, name: str = "decision") -> dict | None:
        """The response_format that asks this server for JSON meeting `schema`."""
        mode = self._json_mode
        if mode == "none":
            return None
        if mode == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}

    def _post(self, body: dict) -> Reply:
        retries, attempt, last, switched = 0, 0, "", False
        last_retry_after = None
        while attempt <= self.cfg.retries:
            if attempt and not switched:
                time.sleep(self._wait(attempt, last_retry_after))
                retries += 1
            switched = False
            attempt += 1
            last_retry_after = None
            try:
                if body.get("stream"):
                    with self._http.stream("POST", "chat/completions", json=body) as r:
                        if r.status_code != 200:
                            r.read()
                            status, text, last_retry_after = r.status_code, r.text, r.headers.get("retry-after")
                        else:
                            reply = _read_stream(r.iter_lines())
                            reply.usage.retries = retries
                            return reply
                else:
                    r = self._http.post("chat/completions", json=body)
                    if r.status_code == 200:
                        reply = _read_completion(r)
                        reply.usage.retries = retries
                        return reply
                    status, text, last_retry_after = r.status_code, r.text, r.headers.get("retry-after")
            except (httpx.TransportError, httpx.StreamError) as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if (status in (400, 422, 500) and self._json_mode == "auto" and _rejects_schema(text)
                    and body.get("response_format", {}).get("type") == "json_schema"):
                # llama.cpp: no json_schema type (llama-cpp-python's server answers 500 with a validation
                # error); it takes json_object with the schema beside it
                self._json_mode = "json_object"
                schema = body["response_format"].get("json_schema", {}).get("schema")
                body = dict(body, response_format={"type": "json_object", "schema": schema})
                attempt -= 1  # a switch of format, not a retry
                switched = True
                continue
            last = f"HTTP {status}: {text[:300]}"
            if status not in RETRY_STATUS:
                raise ChatError(f"{self.cfg.base_url}: {last}")
        raise ChatError(f"{self.cfg.base_url}: gave up after {self.cfg.retries + 1} attempts; last: {last}")

    def _wait(self, attempt: int, retry_after) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.cfg.max_backoff_s)
            except ValueError:
                pass
        base = min(self.cfg.backoff_s * 2 ** (attempt - 1), self.cfg.max_backoff_s)
        return base * (0.5 + self._rng.random() / 2)


def _rejects_schema(text: str) -> bool:
    t = text.lower()
    return "json_schema" in t or "json_object" in t or "response_format" in t or "response format" in t


def _wire_quirks(messages: list[dict]) -> list[dict]:
    """Messages as every server accepts them: an assistant tool-call turn's content is ""
    rather than null (llama.cpp rejects null)."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("content") is None:
            m = dict(m, content="")
        out.append(m)
    return out


def _reasoning(msg: dict) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        v = msg.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def _tool_calls(raw) -> list[ToolCall]:
    out = []
    for i, tc in enumerate(raw or []):
        fn = tc.get("function") or {}
        args = fn.get("arguments")
        if not isinstance(args, str):
            args = json.dumps(args) if args is not None else ""
        out.append(ToolCall(str(tc.get("id") or f"call_{i}"), str(fn.get("name") or ""), args))
    return out


def _usage(raw) -> Usage:
    raw = raw or {}
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0), 1)


def _read_completion(r: httpx.Response) -> Reply:
    try:
        data = r.json()
        choice = data["choices"][0]
        msg = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ChatError(f"not a chat completion ({type(e).__name__}): {r.text[:300]}") from None
    content = msg.get("content")
    return Reply(content if isinstance(content, str) else "", _reasoning(msg), _tool_calls(msg.get("tool_calls")),
                 choice.get("finish_reason"), _usage(data.get("usage")))


def _read_stream(lines) -> Reply:
    """Server-sent events of a streamed completion: deltas of content, reasoning and tool
    calls (by index: id and name once, arguments in pieces), usage in the last chunk."""
    content, reasoning, calls = [], [], {}
    finish, usage = None, Usage(requests=1)
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise ChatError(f"malformed stream chunk: {payload[:200]}") from None
        if chunk.get("usage"):
            usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            r = _reasoning(delta)
            if r:
                reasoning.append(r)
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(tc.get("index", len(calls)), {"id": None, "name": "", "arguments": ""})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    tcs = [ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"]) for i, c in sorted(calls.items())]
    return Reply("".join(content), "".join(reasoning) or None, tcs, finish, usage)


# ------------------------------------------------------------------------ the conversation


@dataclass
class Conversation:
    """Messages with the assistant's reasoning held beside them; `wire()` applies the
    thinking rule. A tool-call round is an assistant turn with tool calls and its results."""
    messages: list[dict] = field(default_factory=list)
    discarded_rounds: int = 0
    summaries: int = 0

    def system(self, text: str) -> "Conversation":
        self.messages.append({"role": "system", "content": text})
        return self

    def user(self, text: str) -> "Conversation":
        self.messages.append({"role": "user", "content": text})
        return self

    def assistant(self, reply: Reply) -> None:
        m: dict = {"role": "assistant", "content": reply.content}
        if reply.reasoning:
            m["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            m["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                               for c in reply.tool_calls]
        self.messages.append(m)

    def tool(self, call_id: str, content: str) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})

    def wire(self) -> list[dict]:
        """What is sent: reasoning only on assistant turns after the last user message."""
        last_user = max((i for i, m in enumerate(self.messages) if m["role"] == "user"), default=-1)
        out = []
        for i, m in enumerate(self.messages):
            if m["role"] == "assistant" and i < last_user and "reasoning_content" in m:
                m = {k: v for k, v in m.items() if k != "reasoning_content"}
            out.append(m)
        return out

    def rounds(self) -> list[tuple[int, int]]:
        """(start, end) message ranges of the tool-call rounds, oldest first."""
        out, i = [], 0
        while i < len(self.messages):
            m = self.messages[i]
            if m["role"] == "assistant" and m.get("tool_calls"):
                j = i + 1
                while j < len(self.messages) and self.messages[j]["role"] == "tool":
                    j += 1
                out.append((i, j))
                i = j
            else:
                i += 1
        return out

    def drop_rounds(self, n: int) -> int:
        """Remove the `n` oldest tool-call rounds (and their results); returns how many went."""
        rounds = self.rounds()[:n]
        gone = {k for a, b in rounds for k in range(a, b)}
        self.messages = [m for k, m in enumerate(self.messages) if k not in gone]
        self.discarded_rounds += len(rounds)
        return len(rounds)

    def size(self, last_prompt_tokens: int | None = None) -> int:
        """Estimated tokens on the wire: the server's count of the last prompt plus what came
        after it, else characters / 4."""
        chars = sum(len(json.dumps(m, ensure_ascii=False)) for m in self.wire())
        return max(last_prompt_tokens or 0, chars // 4)


def _fit(client: ChatClient, conv: Conversation, strategy: str, budget: int) -> bool:
    """Bring the conversation under `budget` tokens; False if it cannot be (the rollout ends)."""
    if conv.size() <= budget:
        return True
    if strategy in ("none", "parallel-fewest-step"):
        return False
    if strategy == "discard-all":
        conv.drop_rounds(len(conv.rounds()))
    elif strategy == "discard-75":
        while conv.size() > budget and conv.rounds():
            conv.drop_rounds(max(1, (len(conv.rounds()) * 3 + 3) // 4))
    elif strategy == "summary":
        _summarise(client, conv)
    return conv.size() <= budget


SUMMARY_PROMPT = ("The conversation is about to exceed the context window. Summarise what you have learned "
                  "from the tool results so far that is needed to finish the task (ids, values, what is left "
                  "to do), in at most 300 words. Do not call tools.")


def _summarise(client: ChatClient, conv: Conversation) -> None:
    """Ask the model for a summary of its trajectory, then restart from the system prompt, the
    first user request and that summary."""
    ask = conv.wire() + [{"role": "user", "content": SUMMARY_PROMPT}]
    reply = client.complete(ask)
    head = [m for m in conv.messages if m["role"] == "system"][:1]
    first = next((m for m in conv.messages if m["role"] == "user"), None)
    conv.messages = head + ([first] if first else []) + [
        {"role": "assistant", "content": f"Summary of my work so far:\n{reply.content.strip()}"},
        {"role": "user", "content": "Continue from your summary."}]
    conv.summaries += 1


# ---------------------------------------------------------------------------- the tool loop


@dataclass
class ToolRun:
    final: str                      # the last reply's text (the answer, for a solver)
    steps: int                      # assistant turns
    tool_calls: int
    tool_errors: int                # calls refused: unknown tool, bad JSON, arguments off the schema
    finished: bool                  # ended on a reply with no tool calls (not the step limit or the window)
    usage: Usage
    conversation: Conversation
    errors: list[str] = field(default_factory=list)


def _check_call(call: ToolCall, tools: dict[str, dict]) -> tuple[dict | None, str | None]:
    """The call's arguments, or why it is refused."""
    import jsonschema

    if call.name not in tools:
        return None, f"unknown tool {call.name!r}; available: {', '.join(sorted(tools)) or 'none'}"
    text = call.arguments.strip() or "{}"
    try:
        args = json.loads(text)
    except ValueError as e:
        return None, f"arguments are not valid JSON ({e.msg} at {e.pos}): {text[:200]}"
    if not isinstance(args, dict):
        return None, "arguments must be a JSON object"
    params = tools[call.name].get("function", {}).get("parameters") or {"type": "object"}
    err = next(iter(jsonschema.Draft202012Validator(params).iter_errors(args)), None)
    if err is not None:
        where = "/".join(map(str, err.absolute_path)) or "arguments"
        return None, f"{where}: {err.message}"
    return args, None


def _one_rollout(client: ChatClient, conv: Conversation, tools: list[dict], call, max_steps: int,
                 strategy: str) -> ToolRun:
    by_name = {t["function"]["name"]: t for t in tools}
    usage = Usage()
    steps = calls = bad = 0
    errors: list[str] = []
    final, finished = "", False
    while steps < max_steps:
        if not _fit(client, conv, strategy, client.cfg.context_tokens):
            errors.append("context window full")
            break
        reply = client.complete(conv.wire(), tools=tools or None)
        usage.add(reply.usage)
        steps += 1
        conv.assistant(reply)
        final = reply.content
        if not reply.tool_calls:
            finished = True
            break
        for tc in reply.tool_calls:
            calls += 1
            args, why = _check_call(tc, by_name)
            if why is not None:
                bad += 1
                errors.append(why)
                conv.tool(tc.id, json.dumps({"error": why}))
                continue
            try:
                out = call(tc.name, args)
            except Exception as e:  # a tool that fails answers with its error; the rollout goes on
                out = json.dumps({"error": f"{type(e).__name__}: {e}"})
            conv.tool(tc.id, out if isinstance(out, str) else json.dumps(out))
    return ToolRun(final, steps, calls, bad, finished, usage, conv, errors)


def run_tools(client: ChatClient, make_conversation, tools: list[dict], call, max_steps: int = 24,
              strategy: str | None = None) -> ToolRun:
    """Run the tool loop on a fresh conversation from `make_conversation()`; `call(name, args)`
    executes a checked call and returns its text. With parallel-fewest-step, several
    independent rollouts run and the finished one with the fewest steps is returned."""
    strategy = strategy or client.cfg.strategy
    if strategy != "parallel-fewest-step":
        return _one_rollout(client, make_conversation(), tools, call, max_steps, strategy)
    n = max(1, client.cfg.parallel)
    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(lambda _: _one_rollout(client, make_conversation(), tools, call, max_steps, strategy),
                             range(n)))
    done = [r for r in runs if r.finished]
    best = min(done or runs, key=lambda r: r.steps)
    for r in runs:
        if r is not best:
            best.usage.add(r.usage)  # every rollout's tokens count
    return best


# ------------------------------------------------------------------------------ decisions


@dataclass
class Decision:
    value: object | None            # the accepted JSON value, or None if every attempt failed
    attempts: int
    errors: list[str]
    usage: Usage
    malformed: int = 0              # replies that were not JSON meeting the schema (the rest failed `check`)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_json_reply(text: str):
    """The JSON value in a reply: the whole text, a fenced block, or the first object or
    array that parses. Raises ValueError with the reason."""
    text = (text or "").strip()
    if not text:
        raise ValueError("the reply is empty")
    candidates = [text] + _FENCE.findall(text)
    for c in candidates:
        try:
            return json.loads(c.strip())
        except ValueError:
            pass
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return dec.raw_decode(text, i)[0]
            except ValueError:
                continue
    raise ValueError("no JSON value found in the reply")


def decide(client: ChatClient, conv: Conversation, schema: dict, check=None, attempts: int = 3,
           name: str = "decision", grammar: dict | None = None) -> Decision:
    """Ask for a JSON decision meeting `schema` (and `check(value)`, which returns an error
    text or None). Each invalid reply goes back to the model with its error. `grammar`, a
    narrower schema, is what the server is asked to decode under (a constrained decoder then
    cannot leave it) while replies are judged by `schema`, so a model without one still has
    its usable items judged one by one by `check`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors: list[str] = []
    usage = Usage()
    malformed = 0
    for n in range(1, attempts + 1):
        reply = client.complete(conv.wire(), response_format=client.json_format(grammar or schema, name))
        usage.add(reply.usage)
        conv.assistant(Reply(reply.content, reply.reasoning, [], reply.finish_reason, reply.usage))
        shaped = False  # the reply is JSON meeting the schema; what is left to fail is `check`
        try:
            value = parse_json_reply(reply.content)
            err = next(iter(validator.iter_errors(value)), None)
            if err is not None:
                where = "/".join(map(str, err.absolute_path)) or "the reply"
                raise ValueError(f"{where}: {err.message}")
            shaped = True
            why = check(value) if check else None
            if why:
                raise ValueError(why)
            return Decision(value, n, errors, usage, malformed)
        except ValueError as e:
            malformed += not shaped
            errors.append(str(e)[:500])
            conv.user(f"That reply was not usable: {str(e)[:500]}\nReply again with JSON only, meeting the schema.")
    return Decision(None, attempts, errors, usage, malformed)
