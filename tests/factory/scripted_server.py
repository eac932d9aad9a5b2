"""A real HTTP server on loopback that speaks the OpenAI chat-completions wire format from a
script: each request is answered by the script's next step (or by a function of the
request), and every request body is recorded for the test to read back."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["ScriptedServer", "completion", "tool_call", "stream"]


def tool_call(name: str, arguments, call_id: str = "call_0") -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def completion(content: str | None = "", calls: list[dict] | None = None, reasoning: str | None = None,
               reasoning_key: str = "reasoning_content", prompt_tokens: int = 10, completion_tokens: int = 5) -> dict:
    msg: dict = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg[reasoning_key] = reasoning
    if calls:
        msg["tool_calls"] = calls
    return {"status": 200, "json": {
        "id": "cmpl", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}}}


def stream(chunks: list[dict]) -> dict:
    """A streamed reply: each chunk is a `delta` (or a whole chunk when it has `choices`/`usage`)."""
    events = []
    for c in chunks:
        body = c if ("choices" in c or "usage" in c) else {"choices": [{"index": 0, "delta": c}]}
        events.append("data: " + json.dumps(body))
    events.append("data: [DONE]")
    return {"status": 200, "sse": events}


class ScriptedServer:
    """`steps`: a list of replies (dicts as made above, or {"status": 429, "json": ..., "headers": ...}),
    or a function(request_body, n) -> reply for the n-th request."""

    def __init__(self, steps):
        self.steps = steps
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer._lock:
                    outer.requests.append({"path": self.path, "body": body,
                                           "auth": self.headers.get("authorization")})
                    k = len(outer.requests) - 1
                    if callable(outer.steps):
                        step = outer.steps(body, k)
                    elif k < len(outer.steps):
                        step = outer.steps[k]
                    else:
                        step = {"status": 500, "json": {"error": "script exhausted"}}
                self.send_response(step.get("status", 200))
                for h, v in (step.get("headers") or {}).items():
                    self.send_header(h, v)
                if "sse" in step:
                    data = ("\n\n".join(step["sse"]) + "\n\n").encode()
                    self.send_header("content-type", "text/event-stream")
                else:
                    data = json.dumps(step.get("json", {})).encode()
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._srv.shutdown()
        self._srv.server_close()

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]
