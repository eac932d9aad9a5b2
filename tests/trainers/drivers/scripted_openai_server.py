"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for driving real
trainer and eval libraries through whole multi-turn tool-use rollouts without a model.

    python scripted_openai_server.py SCRIPT.json LOG.jsonl [--max-seconds 900]

SCRIPT.json: {"tasks": [{"prompt": <first user message text>, "calls": [{"name", "arguments"}],
"answers": {<mode>: <final text>, ...}}, ...]}. The request's model name is the mode: each
conversation is recognised by its first user message; while it holds fewer assistant turns
than the task has calls, the reply is the next reference call as one OpenAI `tool_calls`
entry; then the final text of that mode (`reference`, `junk`, ...). A model name that is no
mode of the task, or a prompt of no task, gets a reply saying so (it scores 0).

Both response forms are served: a JSON `chat.completion`, and with `"stream": true` the same
message as SSE `chat.completion.chunk` events (usage last when `stream_options.include_usage`).
`GET .../models` lists the modes. Every request appends one JSON line to LOG.jsonl: the task
index, mode, turn, the tools offered ({name: parameter names}) and the `tool` messages the
request carried (name, call id, content), so a test can check what the model was shown and
what the library's tools answered. The port is printed on stdout as
`{"port": N}` once listening; the server exits by itself after --max-seconds. Standard
library only: it runs under any of the trainer venvs' Pythons, or the project's.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def text_of(content) -> str:
    """A message's content as text: a string, or the text of its content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


class Script:
    def __init__(self, data: dict, log: Path):
        self.tasks = data["tasks"]
        self.by_prompt = {t["prompt"]: i for i, t in enumerate(self.tasks)}
        if len(self.by_prompt) != len(self.tasks):
            raise SystemExit("scripted server: two tasks share a prompt; they could not be told apart")
        self.modes = sorted({m for t in self.tasks for m in t["answers"]})
        self.log, self.lock = log, threading.Lock()

    def reply(self, body: dict) -> tuple[dict, str]:
        """(assistant message, finish_reason) for one chat-completions request."""
        messages = body.get("messages") or []
        mode = body.get("model", "")
        first_user = next((text_of(m.get("content")) for m in messages if m.get("role") == "user"), None)
        index = self.by_prompt.get(first_user)
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        tools = [{"name": m.get("name"), "tool_call_id": m.get("tool_call_id"), "content": text_of(m.get("content"))}
                 for m in messages if m.get("role") == "tool"]
        offered = {}
        for t in body.get("tools") or []:
            fn = t.get("function", t) if isinstance(t, dict) else {}
            offered[fn.get("name")] = sorted((fn.get("parameters") or {}).get("properties", {}))
        self.record({"task": index, "mode": mode, "turn": turn, "tools_offered": offered, "tool_messages": tools})
        if index is None:
            return {"role": "assistant", "content": "scripted server: no task has this prompt"}, "stop"
        task = self.tasks[index]
        if turn < len(task["calls"]):
            call = task["calls"][turn]
            return {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{index}_{turn}", "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]}, "tool_calls"
        answer = task["answers"].get(mode)
        if answer is None:
            answer = f"scripted server: no mode {mode!r} (modes: {', '.join(self.modes)})"
        return {"role": "assistant", "content": answer}, "stop"

    def record(self, entry: dict) -> None:
        with self.lock, self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def usage(body: dict, message: dict) -> dict:
    # Rough counts (4 characters a token); the libraries only sum them.
    prompt = len(json.dumps(body.get("messages") or [])) // 4 + 1
    completion = len(json.dumps(message)) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Handler(BaseHTTPRequestHandler):
    script: Script  # set on the subclass made in main()

    def log_message(self, *args):  # quiet: the JSONL log is the record
        pass

    def send_json(self, obj: dict, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self.send_json({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "scripted"}
                                                       for m in self.script.modes]})
        else:
            self.send_json({"error": {"message": f"no route {self.path}"}}, 404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_json({"error": {"message": "body is not JSON"}}, 400)
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self.send_json({"error": {"message": f"no route {self.path}"}}, 404)
            return
        message, finish = self.script.reply(body)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "created": int(time.time()), "model": body.get("model", "")}
        if body.get("stream"):
            self.stream(body, base, message, finish)
            return
        self.send_json(dict(base, object="chat.completion", usage=usage(body, message),
                            choices=[{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]))

    def stream(self, body: dict, base: dict, message: dict, finish: str) -> None:
        delta = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [dict(c, index=i) for i, c in enumerate(message["tool_calls"])]
        chunk = dict(base, object="chat.completion.chunk")
        events = [dict(chunk, choices=[{"index": 0, "delta": delta, "finish_reason": None}]),
                  dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": finish}])]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(dict(chunk, choices=[], usage=usage(body, message)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("script", type=Path)
    ap.add_argument("log", type=Path)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    a = ap.parse_args(argv)
    handler = type("ScriptedHandler", (Handler,), {"script": Script(json.loads(a.script.read_text()), a.log)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    timer = threading.Timer(a.max_seconds, server.shutdown)
    timer.daemon = True
    timer.start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
