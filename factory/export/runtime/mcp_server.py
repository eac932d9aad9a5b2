"""MCP server for one envfactory environment: its tools over stdio or streamable HTTP.

    python mcp_server.py [--env ENV_ID] [--transport stdio|http] [--host 127.0.0.1] [--port 8000]

Needs `mcp>=2.3,<3` (the low-level `Server` with `on_*` handlers) and duckdb; reads the
environments beside it (`envs/`, see envfactory_runtime.py) or the directory given with
`--root`. HTTP serves `/mcp` on loopback by default, JSON responses, with DNS-rebinding
protection for loopback hosts.

Tools: the environment's own (read-only queries; schemas exactly as in
tools/tool_schemas.json) plus three for the episode: `start_task(task_id)` (returns the
task's prompt and limits later calls to that task's tools), `submit_answer(answer)` (scores
it with the task's verifier) and `episode_state()`.

Episode state is per session. The session is, in order: the `envfactory/episode` key of a
request's `_meta` (any transport, and the only one on stateless 2026-07-28 HTTP, which has
no sessions); the `Mcp-Session-Id` of a handshake-era HTTP session; the process on stdio
(one client per process). A request with none of these still gets tool results; episode
tools then answer with an error saying how to get a session.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

EPISODE_META_KEY = "envfactory/episode"
HERE = Path(__file__).resolve().parent

EPISODE_TOOLS = [
    {"name": "start_task", "description": "Start an episode on one task of this environment; returns its prompt.",
     "inputSchema": {"type": "object", "properties": {"task_id": {"type": "string", "description": "Id of the task."}},
                     "required": ["task_id"], "additionalProperties": False}},
    {"name": "submit_answer",
     "description": "Submit the final answer (the plan as JSON text) for the started task; returns its score.",
     "inputSchema": {"type": "object", "properties": {"answer": {"type": "string",
                                                                 "description": "The answer as JSON text."}},
                     "required": ["answer"], "additionalProperties": False}},
    {"name": "episode_state", "description": "This session's task, tool calls so far and submission.",
     "inputSchema": {"type": "object", "properties": {}, "required": [], "additionalProperties": False}},
]


def _runtime_module():
    spec = importlib.util.spec_from_file_location(f"_envfactory_runtime_{abs(hash(str(HERE)))}",
                                                  HERE / "envfactory_runtime.py")
    mod = importlib.util.module_from_spec(spec)
    exec(compile(Path(spec.origin).read_bytes(), spec.origin, "exec"), mod.__dict__)  # writes no __pycache__
    return mod


def session_key(ctx) -> str | None:
    meta = ctx.meta or {}
    value = meta.get(EPISODE_META_KEY) if isinstance(meta, dict) else getattr(meta, EPISODE_META_KEY, None)
    if isinstance(value, str) and value:
        return "meta:" + value
    request = ctx.request
    if request is None:
        return "stdio"
    sid = request.headers.get("mcp-session-id")
    return "http:" + sid if sid else None


def build_server(runtime, env_id: str | None = None):
    """A low-level mcp `Server` exposing one environment of `runtime`."""
    import anyio
    import mcp_types as types
    from mcp.server import Server

    env = runtime.env(env_id)
    tools = [{"name": n, "description": s["function"]["description"], "inputSchema": s["function"]["parameters"]}
             for n, s in env.schemas.items()] + EPISODE_TOOLS
    schemas = {t["name"]: t["inputSchema"] for t in tools}

    def result(text: str, error: bool) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=error)

    def fail(msg: str):
        return result(json.dumps({"error": msg}), True)

    async def list_tools(ctx, params):
        return types.ListToolsResult(tools=[types.Tool(name=t["name"], description=t["description"],
                                                       input_schema=t["inputSchema"]) for t in tools])

    async def call_tool(ctx, params):
        name, args = params.name, dict(params.arguments or {})
        if name not in schemas:
            return fail(f"unknown tool {name!r}")
        key = session_key(ctx)
        if name in env.schemas:
            ep = runtime.episode(key, env_id=env.env_id) if key else runtime.episode(None, env_id=env.env_id)
            out = await anyio.to_thread.run_sync(ep.call, name, args)  # DuckDB blocks; keep other sessions served
            return result(out, out.startswith('{"error"'))
        if key is None:
            return fail(f"no session: use the initialize handshake over HTTP, or pass _meta {EPISODE_META_KEY!r}")
        if name == "start_task":
            task_id = args.get("task_id")
            if task_id not in env.tasks:
                return fail(f"unknown task {task_id!r}; tasks: {', '.join(env.tasks)}")
            ep = runtime.start(key, task_id)
            return result(json.dumps({"task_id": task_id, "prompt": ep.task["prompt"], "tools": ep.tool_names}), False)
        ep = runtime.episode(key, env_id=env.env_id)
        if name == "episode_state":
            return result(json.dumps(ep.state()), False)
        if ep.task is None:
            return fail("no task started in this session: call start_task first")
        res = await anyio.to_thread.run_sync(ep.submit, args.get("answer", ""))
        failed = [c["name"] for c in res["checks"] if not c["passed"]]
        return result(json.dumps({"score": res["score"], "failed_checks": failed}), False)

    return Server(f"envfactory-{env.env_id}", version="1",
                  instructions=f"Tools of envfactory environment {env.env_id}. Tasks: {', '.join(env.tasks)}.",
                  get_tool_input_schema=schemas.get, on_list_tools=list_tools, on_call_tool=call_tool)


async def run_stdio(server) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def run_http(server, host: str, port: int) -> None:
    import uvicorn

    app = server.streamable_http_app(streamable_http_path="/mcp", json_response=True, stateless_http=False, host=host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()


def main(argv=None, root: Path | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve an envfactory environment's tools over MCP.")
    ap.add_argument("--root", default=None, help="export or environment directory (default: beside this file)")
    ap.add_argument("--env", default=None, help="environment id (needed when there are several)")
    ap.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args(argv)
    import anyio

    runtime = _runtime_module().Runtime(Path(a.root) if a.root else (root or HERE))
    try:
        server = build_server(runtime, a.env)
    except KeyError as e:
        print(f"mcp_server: error: {e.args[0]}", file=sys.stderr)
        return 2
    if a.transport == "stdio":
        anyio.run(run_stdio, server)
    else:
        print(f"serving {runtime.env(a.env).env_id} on http://{a.host}:{a.port}/mcp", file=sys.stderr, flush=True)
        anyio.run(run_http, server, a.host, a.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
