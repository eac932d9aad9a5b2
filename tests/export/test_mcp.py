"""The MCP export and `factory serve`, driven by the official `mcp` client over stdio and
streamable HTTP: list tools, call each tool, episode state kept within a session and not
across sessions, outputs under the declared limit. Servers run as subprocesses on loopback
and are always stopped."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

mcp = pytest.importorskip("mcp")
from mcp import Client, StdioServerParameters

from .conftest import as_response, env_dirs, free_port, mutant, tasks_of

TIMEOUT = 60
EPISODE = "envfactory/episode"


@contextlib.contextmanager
def http_server(cmd: list[str], port: int, cwd: Path | None = None):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start in 30 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _text(result) -> str:
    assert len(result.content) == 1
    return result.content[0].text


async def _exercise_tools(client, env: Path, limit: int) -> None:
    """List tools; call every environment tool with the arguments of the reference solutions."""
    schemas = json.loads((env / "tools" / "tool_schemas.json").read_text())
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == {s["function"]["name"] for s in schemas} | {"start_task", "submit_answer", "episode_state"}
    for s in schemas:
        assert listed[s["function"]["name"]].input_schema == s["function"]["parameters"]
    calls = {(c["name"], json.dumps(c["arguments"], sort_keys=True)): c for t in tasks_of(env)
             for c in t["reference_tool_calls"]}
    called = set()
    for c in calls.values():
        r = await client.call_tool(c["name"], c["arguments"])
        text = _text(r)
        assert not r.is_error and json.loads(text)["results"] and len(text) <= limit
        called.add(c["name"])
    assert called == set(listed) - {"start_task", "submit_answer", "episode_state"}
    r = await client.call_tool("search_hotels", {"city_id": "no-such-city"})
    assert not r.is_error and json.loads(_text(r)) == {"results": []}
    detail = next(n for n in sorted(listed) if n.startswith("get_") and n.endswith("_details"))
    arg = next(iter(listed[detail].input_schema["properties"]))
    r = await client.call_tool(detail, {arg: "no-such-id"})
    assert r.is_error and "error" in json.loads(_text(r))


async def _episode(client, task: dict, meta=None) -> dict:
    """Start a task, make its reference calls, submit a mutant then the reference."""
    kw = {"meta": meta} if meta else {}
    r = await client.call_tool("start_task", {"task_id": task["task_id"]}, **kw)
    started = json.loads(_text(r))
    assert started["prompt"] == task["prompt"] and started["tools"] == task["tools"]
    for c in task["reference_tool_calls"][:3]:
        assert not (await client.call_tool(c["name"], c["arguments"], **kw)).is_error
    bad = json.loads(_text(await client.call_tool("submit_answer", {"answer": json.dumps(mutant(task["reference_answer"]))}, **kw)))
    assert bad["score"] == 0.0 and "linked" in bad["failed_checks"]
    good = json.loads(_text(await client.call_tool("submit_answer", {"answer": as_response(task["reference_answer"])}, **kw)))
    assert good == {"score": 1.0, "failed_checks": []}
    return json.loads(_text(await client.call_tool("episode_state", {}, **kw)))


def test_stdio_server_from_export(exports, bundle):
    out = exports["mcp"]
    env = env_dirs(bundle)[1]
    task = tasks_of(env)[-1]
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    entry = json.loads((out / "mcp_servers.json").read_text())["mcpServers"][f"envfactory-{env.name}"]
    params = StdioServerParameters(command=sys.executable, args=entry["args"], cwd=str(out))

    async def main():
        with anyio.fail_after(TIMEOUT):
            async with Client(params) as c:
                await _exercise_tools(c, env, limit)
                state = await _episode(c, task)
                assert state["task_id"] == task["task_id"] and state["tool_calls"] == 3 and state["score"] == 1.0
            async with Client(params) as c:  # a new stdio session is a new process: no state carried over
                state = json.loads(_text(await c.call_tool("episode_state", {})))
                assert state["task_id"] is None and state["tool_calls"] == 0
                r = await c.call_tool("submit_answer", {"answer": "{}"})
                assert r.is_error and "start_task" in json.loads(_text(r))["error"]

    anyio.run(main)


def test_http_server_from_export_sessions(exports, bundle):
    out = exports["mcp"]
    env = env_dirs(bundle)[0]
    tasks = tasks_of(env)
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    port = free_port()
    cmd = [sys.executable, str(out / "mcp_server.py"), "--env", env.name, "--transport", "http", "--port", str(port)]

    async def main(url):
        with anyio.fail_after(TIMEOUT):
            async with Client(url, mode="legacy") as a, Client(url, mode="legacy") as b:
                await _exercise_tools(a, env, limit)
                sa = await _episode(a, tasks[2])
                assert sa["task_id"] == tasks[2]["task_id"] and sa["tool_calls"] == 3
                sb = json.loads(_text(await b.call_tool("episode_state", {})))
                assert sb["task_id"] is None and sb["tool_calls"] == 0 and sb["episode_id"] != sa["episode_id"]
                await b.call_tool("start_task", {"task_id": tasks[0]["task_id"]})
                await b.call_tool("list_cities", {})
                sa2 = json.loads(_text(await a.call_tool("episode_state", {})))
                assert sa2["task_id"] == tasks[2]["task_id"] and sa2["tool_calls"] == 3 and sa2["score"] == 1.0
            # the stateless 2026-07-28 protocol has no session: episodes ride on _meta instead
            async with Client(url) as c:
                assert c.protocol_version == "2026-07-28"
                r = await c.call_tool("episode_state", {})
                assert r.is_error and "no session" in json.loads(_text(r))["error"]
                st = await _episode(c, tasks[1], meta={EPISODE: "x1"})
                assert st["episode_id"] == "meta:x1" and st["tool_calls"] == 3
                other = json.loads(_text(await c.call_tool("episode_state", {}, meta={EPISODE: "x2"})))
                assert other["task_id"] is None

    with http_server(cmd, port) as url:
        anyio.run(main, url)


def test_factory_serve_http_and_stdio(bundle):
    env = env_dirs(bundle)[2]
    task = tasks_of(env)[0]
    port = free_port()
    factory = [sys.executable, "-m", "envfactory.factory.cli", "serve"]
    root = Path(__file__).resolve().parents[2]

    async def over(client_target, **kw):
        with anyio.fail_after(TIMEOUT):
            async with Client(client_target, **kw) as c:
                names = {t.name for t in (await c.list_tools()).tools}
                assert set(task["tools"]) <= names
                return await _episode(c, task)

    with http_server(factory + [str(env), "--transport", "http", "--port", str(port)], port, cwd=root) as url:
        assert anyio.run(lambda: over(url, mode="legacy"))["score"] == 1.0
    params = StdioServerParameters(command=sys.executable, args=["-m", "envfactory.factory.cli", "serve", str(env)], cwd=str(root))
    assert anyio.run(lambda: over(params))["score"] == 1.0


def test_runtime_on_a_bundle_writes_no_bytecode(bundle, monkeypatch):
    """`factory serve` runs the runtime on a bundle directory: loading its tools and verifiers
    must leave the bundle's files (and so its manifest check) as they were, also where Python
    writes bytecode (the default; PYTHONDONTWRITEBYTECODE may hide it)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    from envfactory.factory.bundle import verify_manifest
    from envfactory.factory.export.runtime.envfactory_runtime import Runtime

    env = env_dirs(bundle)[0]
    task = tasks_of(env)[0]
    rt = Runtime(env)
    ep = rt.start("bytecode", task["task_id"])
    call = task["reference_tool_calls"][0]
    assert '"results"' in ep.call(call["name"], call["arguments"])
    assert ep.submit(task["reference_answer"])["score"] == 1.0
    assert not list(env.rglob("__pycache__")) and verify_manifest(env) == []
