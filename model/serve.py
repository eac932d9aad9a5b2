"""An OpenAI-compatible chat completions server for our DSA model.

    python -m envfactory.model.serve CHECKPOINT [--host 127.0.0.1] [--port 8000] [--device cpu]

CHECKPOINT is a directory with `config.json`, `tokenizer.json` and the weights (`*.safetensors`, one
file or shards).

- `POST /v1/chat/completions`: messages (system, user, assistant, tool, developer), tools and
  tool_choice (auto, none, required, or one named function), response_format (text,
  json_object, json_object with a `schema` as llama.cpp takes it, json_schema), max_tokens
  (or max_completion_tokens), temperature, top_p, top_k, min_p, seed, stop, stream (SSE,
  with stream_options.include_usage), and V3.2 thinking (`chat_template_kwargs.thinking`
  or `thinking: true`): the reply's reasoning comes back as `reasoning_content`.
- `GET /v1/models`, `GET /health`.

Every completion is decoded under a grammar (`constrain.py`): JSON that the requested
schema accepts, tool calls to the offered tools with typed arguments, or plain content
with no stray special token; so a reply always parses, random weights included, unless it
ran out of tokens (finish_reason "length"; then the raw text is the content).

Requests are batched continuously (`scheduler.py`, `--slots N`, default 8): each joins the
running batch as soon as a slot and pages are free, and leaves when done; prompts that begin
like an earlier one (an agent's next turn, a shared system prompt) prefill only what is new,
from the page pool's prefix entries. `--slots 0` serves one request at a time on the
single-sequence engine (`engine.py`) instead. Bad requests get a 400 with an OpenAI-style
error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .chat_format import ChatFormatError, parse_completion, render
from .checkpoint import load_pretrained  # noqa: F401  (where callers have found it)
from .constrain import Constraint, ConstraintError
from .engine import Completion, Engine, SamplingParams
from .scheduler import Scheduler


class RequestError(ValueError):
    """A request this server cannot serve (400)."""


@dataclass
class Prepared:
    prompt: list[int]
    params: SamplingParams
    constraint: Constraint
    thinking: bool
    calls: bool          # the grammar admits tool calls
    stream: bool
    include_usage: bool


def _tool_choice(body: dict, tools: list | None) -> tuple[list | None, bool]:
    """(the tools the grammar offers, whether a call is required)."""
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None, False
    if choice == "auto":
        return tools, False
    if choice == "required":
        return tools, True
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        named = [t for t in tools if (t.get("function") or {}).get("name") == name]
        if not named:
            raise RequestError(f"tool_choice names {name!r}, which is not among the tools")
        return named, True
    raise RequestError("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}")


def _schema(body: dict) -> dict | None:
    rf = body.get("response_format") or {"type": "text"}
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return rf.get("schema") or {"type": "object"}
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
            raise RequestError("response_format json_schema needs json_schema.schema (an object)")
        return js["schema"]
    raise RequestError("response_format.type must be text, json_object or json_schema")


def _number(body: dict, key: str, default, lo=None, cast=float):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (cast is int and not isinstance(v, int)):
        raise RequestError(f"{key} must be {'an integer' if cast is int else 'a number'}")
    if lo is not None and v < lo:
        raise RequestError(f"{key} must be at least {lo}")
    return cast(v)


class ModelServer:
    """The engine behind HTTP; `complete(body)` is the library call the handler wraps."""

    def __init__(self, engine: Engine, name: str = "dsa-local", host: str = "127.0.0.1", port: int = 0):
        self.engine, self.name = engine, name
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ModelServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="model-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, and stop the engine's scheduler thread if it has one."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if hasattr(self.engine, "close"):
            self.engine.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    # ------------------------------------------------------------------------- requests

    def prepare(self, body: dict) -> Prepared:
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise RequestError("messages must be a non-empty list of objects")
        if body.get("n", 1) != 1:
            raise RequestError("only n=1 is served")
        tools = body.get("tools")
        if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
            raise RequestError("tools must be a list of objects")
        kwargs = body.get("chat_template_kwargs") or {}
        thinking = bool(body.get("thinking", kwargs.get("thinking", False)))
        offered, require = _tool_choice(body, tools)
        schema = _schema(body)
        try:
            text = render(messages, tools=tools or None, thinking=thinking)
            constraint = Constraint.completion(self.engine.tok, schema=schema, tools=offered,
                                               require_tool=require, thinking=thinking)
        except (ChatFormatError, ConstraintError) as e:
            raise RequestError(str(e)) from None
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise RequestError("stop must be a string or a list of strings")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        try:
            params = SamplingParams(
                max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", 512, 1, int),
                temperature=_number(body, "temperature", 1.0, 0.0),
                top_p=_number(body, "top_p", 1.0), top_k=_number(body, "top_k", 0, 0, int),
                min_p=_number(body, "min_p", 0.0, 0.0),
                seed=_number(body, "seed", None, None, int), stop=tuple(stop))
        except ValueError as e:
            raise RequestError(str(e)) from None
        prompt = self.engine.tok.encode(text)
        if len(prompt) >= self.engine.max_len:
            raise RequestError(f"the prompt is {len(prompt)} tokens; this model's context is {self.engine.max_len}")
        so = body.get("stream_options") or {}
        return Prepared(prompt, params, constraint, thinking, offered is not None, bool(body.get("stream", False)),
                        bool(so.get("include_usage", False)))

    def run(self, req: Prepared, on_text=None) -> Completion:
        if not getattr(self.engine, "concurrent", False):  # one engine, one request at a time
            with self._lock:
                return self.engine.generate(req.prompt, req.params, req.constraint, on_text)
        if on_text is None:
            return self.engine.generate(req.prompt, req.params, req.constraint)
        # the scheduler's thread only queues text; this request's thread writes it out, so a
        # slow client never holds up the batch, and one that left cancels its request
        pieces: queue.SimpleQueue = queue.SimpleQueue()
        fut = self.engine.submit(req.prompt, req.params, req.constraint, pieces.put)
        fut.add_done_callback(lambda _: pieces.put(None))
        try:
            while (piece := pieces.get()) is not None:
                on_text(piece)
        except BaseException:
            self.engine.cancel(fut)
            raise
        return fut.result()

    def message(self, req: Prepared, c: Completion) -> tuple[dict, str]:
        """The assistant message and the finish reason of a completion."""
        try:
            parsed = parse_completion(c.text, thinking=req.thinking)
        except ChatFormatError:
            # only a completion cut short can fail to parse: the grammar admits no other
            return {"role": "assistant", "content": c.text}, "length"
        msg = {"role": "assistant", "content": parsed.content}
        if parsed.reasoning is not None:
            msg["reasoning_content"] = parsed.reasoning
        if parsed.tool_calls:
            msg["tool_calls"] = parsed.tool_calls
        finish = "tool_calls" if parsed.tool_calls else c.finish_reason
        return msg, finish

    def usage(self, c: Completion) -> dict:
        return {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.ids),
                "total_tokens": c.prompt_tokens + len(c.ids),
                "prompt_tokens_details": {"cached_tokens": c.cached_tokens}}

    def complete(self, body: dict) -> dict:
        """One chat completion response for a request body (raises RequestError)."""
        return self.respond(self.prepare(body))

    def respond(self, req: Prepared) -> dict:
        c = self.run(req)
        msg, finish = self.message(req, c)
        return {"id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                "usage": self.usage(c)}

    def stream(self, req: Prepared, send) -> None:
        """Server-sent chunks through send(dict); content streams as it is decoded when the
        reply can hold no tool calls, else the parsed message follows the decoding."""
        cid, created = f"chatcmpl-{next(self._ids)}", int(time.time())

        def chunk(delta: dict, finish=None, usage=None) -> dict:
            d = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                d["choices"], d["usage"] = [], usage
            return d

        send(chunk({"role": "assistant", "content": ""}))
        live = not (req.thinking or req.calls)
        c = self.run(req, (lambda piece: send(chunk({"content": piece}))) if live else None)
        msg, finish = self.message(req, c)
        if not live:
            for key in ("reasoning_content", "content"):
                if msg.get(key):
                    send(chunk({key: msg[key]}))
            if msg.get("tool_calls"):
                send(chunk({"tool_calls": [{"index": i, **t} for i, t in enumerate(msg["tool_calls"])]}))
        send(chunk({}, finish))
        if req.include_usage:
            send(chunk({}, usage=self.usage(c)))


def _handler(server: ModelServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the agent's own logs say what it asked
            pass

        def _json(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._json(200, {"object": "list", "data": [{"id": server.name, "object": "model",
                                                             "owned_by": "envfactory"}]})
            elif self.path == "/health":
                self._json(200, {"status": "ok"})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}")
            try:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"null")
                req = server.prepare(body)
            except (ValueError, RequestError) as e:  # JSONDecodeError is a ValueError
                return self._error(400, str(e) if isinstance(e, RequestError) else f"the body is not JSON: {e}")
            if not req.stream:
                return self._json(200, server.respond(req))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()

            def send(obj: dict) -> None:
                self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
                self.wfile.flush()

            try:
                server.stream(req, send)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client left; the engine finished its completion and stays usable
            self.close_connection = True

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m envfactory.model.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a directory with config.json, model.safetensors, tokenizer.json")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-len", type=int, default=None, help="context window (default: the model's)")
    ap.add_argument("--slots", type=int, default=8,
                    help="requests decoded together (continuous batching); 0: one at a time")
    ap.add_argument("--cuda-graphs", action="store_true", help="capture the batched decode step (CUDA)")
    ap.add_argument("--name", default=None, help="the model name the server reports (default: the directory's)")
    args = ap.parse_args(argv)
    try:
        model, tok = load_pretrained(args.checkpoint, args.device)
        engine = (Scheduler(model, tok, args.slots, args.max_len, graphs=args.cuda_graphs) if args.slots
                  else Engine(model, tok, args.max_len))
        server = ModelServer(engine, args.name or Path(args.checkpoint).name, args.host, args.port)
    except (OSError, ValueError, KeyError) as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
    print(f"serve: {server.name} ({model.num_params() / 1e6:.1f}M parameters) at {server.base_url}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
