"""openenv: an OpenEnv environment package (openenv.yaml, server/app.py, pyproject.toml, Dockerfile).

`envfactory_openenv.EnvfactoryCore` is the environment (reset/step/state over the runtime,
no openenv dependency); `server/app.py` builds openenv's `create_app(...)` around it.
Actions: list_tools, call_tool {tool_name, arguments}, submit {answer} (terminal; reward =
verifier score). Episodes are kept in the runtime's store by episode id, so plain-HTTP
`POST /reset` then `POST /step {"episode_id": ...}` works as well as OpenEnv's WebSocket client.

Supported: `openenv` 0.10 (the package's current name) and `openenv-core` 0.3 (its earlier
name; both install the `openenv` module, so one at a time). What each `openenv validate .`
reads: 0.3 wants pyproject.toml with a `server` script and an openenv dependency, uv.lock, and
server/app.py with `main()` under a `__main__` guard; 0.10 wants a `validation:` block in
openenv.yaml (declared reward contract, resources, capabilities, tags). uv.lock is the one
thing not shipped: it is a resolution against the package index (`uv lock`, as `openenv init`
runs it), and an export is written offline; the card says to run it before 0.3's validate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from envfactory.factory.export import register
from envfactory.factory.export.common import (
    duckdb_requirement,
    InputBundle,
    copy_envs,
    copy_runtime,
    max_tool_chars,
    render,
    task_rows,
    union_schemas,
    write_card,
    write_settings,
)

__all__ = ["DEPENDENCIES", "write"]

PORT = 8000
VERSION = "1.0.0"
REQUIRES_PYTHON = ">=3.10"  # openenv 0.10 and openenv-core 0.3 both require 3.10
# Everything the shipped modules import: openenv (fastapi, pydantic, uvicorn come with it),
# duckdb (the tools and verifiers); the rest is the standard library.
DEPENDENCIES = ("openenv>=0.10,<0.11", "duckdb>=1.1", "uvicorn>=0.24")  # duckdb: raised to the databases' writer


def _dependencies(src: InputBundle) -> tuple[str, ...]:
    return tuple(duckdb_requirement(src) if d.startswith("duckdb") else d for d in DEPENDENCIES)
OPENENV_CORE = "openenv-core>=0.3,<0.4"

# openenv 0.10's manifest: what `openenv validate` grades against. Each number is a claim.
REWARD = {"range": [0.0, 1.0],
          "oracle_tolerance": 0.0,  # the reference answer scores exactly 1 (verifiers are exact)
          "floor_margin": 1.0}  # a junk or empty answer scores exactly 0
# The server process: 210-230 MB resident after 24 episodes (openenv 0.10.0 / openenv-core 0.3.0);
# on disk, a venv of either with duckdb is 550 MB, plus the environments' files.
RESOURCES = {"cpu": 1, "memory_mb": 1024, "episode_timeout_s": 600}  # tools answer in milliseconds
DEPS_DISK_MB = 600

DOCKERFILE = f'''FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -r server/requirements.txt
EXPOSE {PORT}
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/health')"
# 0.0.0.0 inside the container only: the published port is the way in (outside, main() binds 127.0.0.1)
CMD ["python", "-m", "server.app", "--host", "0.0.0.0", "--port", "{PORT}"]
'''


def _manifest(src: InputBundle, splits: dict, name: str, envs_dir: Path) -> dict:
    rows = task_rows(src, splits)
    return {
        "spec_version": 1, "name": name, "type": "space", "runtime": "fastapi", "app": "server.app:app", "port": PORT,
        "validation": {
            "reward": REWARD,
            "resources": dict(RESOURCES, disk_mb=DEPS_DISK_MB + math.ceil(
                sum(p.stat().st_size for p in envs_dir.rglob("*") if p.is_file()) / 2**20)),
            "network": {"mode": "no-network"},  # the tools read the local sandbox; nothing leaves the process
            "capabilities": {"verifier": {"kind": "reward_channel"},
                             "declared_tools": [s["function"]["name"] for s in union_schemas(src)],
                             "declared_task_count": {k: len(v) for k, v in rows.items() if v}},
            "types": {"tags": ["tool-use", "agentic-rl", "envfactory", *src.seeds]},
        },
    }


def _requirements(deps: tuple[str, ...]) -> str:
    return (f"# OpenEnv: {deps[0]}, or its earlier name {OPENENV_CORE} in its place (both install the\n"
            f"# `openenv` module: install one). Tested: openenv 0.10.0, openenv-core 0.3.0.\n"
            + "\n".join(deps) + "\n")


def write(src: InputBundle, dest: Path, splits: dict) -> dict:
    limit = max_tool_chars(src)
    deps = _dependencies(src)
    name = "envfactory_" + "_".join(src.seeds)
    copy_envs(src, dest)
    copy_runtime(dest, "envfactory_openenv.py")
    write_settings(dest, {"target": "openenv", "max_tool_response_chars": limit, "name": name})
    manifest = _manifest(src, splits, name, dest / "envs")
    (dest / "openenv.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    (dest / "server").mkdir()
    (dest / "server" / "__init__.py").write_text("", encoding="utf-8")
    render("openenv/app.py.j2", dest / "server" / "app.py", port=PORT)
    render("openenv/pyproject.toml.j2", dest / "pyproject.toml", project=name.replace("_", "-"), version=VERSION,
           requires_python=REQUIRES_PYTHON, dependencies=deps)
    (dest / "server" / "requirements.txt").write_text(_requirements(deps), encoding="utf-8")
    (dest / "server" / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
    write_card(dest, "openenv", src, splits, _usage(src), None, limit)
    return {"max_tool_response_chars": limit, "name": name, "requires": list(deps)}


def _curl(path: str, body: dict) -> str:
    return (f"curl -s -X POST 127.0.0.1:{PORT}{path} -H 'content-type: application/json' \\\n"
            f"     -d '{json.dumps(body)}'")


def _usage(src: InputBundle) -> str:
    task = src.tasks[0]
    calls = task["reference_tool_calls"] or [{"name": task["tools"][0], "arguments": {}}]
    call = calls[0]
    http = "\n".join([
        _curl("/reset", {"task_id": task["task_id"]}) + "   # -> observation.episode_id",
        _curl("/step", {"episode_id": "<id>", "action": {"type": "call_tool", "tool_name": call["name"],
                                                          "arguments": call["arguments"]}}),
        _curl("/step", {"episode_id": "<id>", "action": {"type": "submit", "answer": '{"days": []}'}}),
    ])
    return f"""
Supported: `openenv` 0.10 (`{DEPENDENCIES[0]}`, the package's current name) or `openenv-core` 0.3
(`{OPENENV_CORE}`, its earlier name). Both install the same `openenv` module, so install one.
The server, the client below and plain HTTP behave the same on both (tested with openenv 0.10.0
and openenv-core 0.3.0; 0.10's HTTP responses carry an extra, empty `metadata`). What differs is
`openenv validate .`: 0.10 grades the `validation:` block of openenv.yaml (its static level
passes; its runtime level builds a Docker image and is skipped, as this manifest declares no
`validation.execution`); 0.3 checks pyproject.toml, server/app.py's `main()` and a `uv.lock`,
which an export cannot ship (it is a resolution against the package index): run `uv lock` here
first. Python 3.10 or later.

```bash
pip install -r server/requirements.txt   # or: uv lock && uv sync
python -m server.app --port {PORT}       # or: uv run server --port {PORT}
```

The server binds 127.0.0.1 (`--host`, or `ENVFACTORY_OPENENV_HOST`, to change it; it has no
authentication). The Docker image (`docker build -f server/Dockerfile .`) binds 0.0.0.0 inside
its container. `GET /tasks` lists the task ids; a reset with an unknown `task_id` is an HTTP 422
(over the WebSocket, an error the client raises).

With OpenEnv's client (a WebSocket session: the server keeps its episode):

```python
from openenv.core import GenericEnvClient

with GenericEnvClient(base_url="http://127.0.0.1:{PORT}").sync() as env:
    obs = env.reset(task_id="{task['task_id']}").observation  # messages, tools, episode_id
    step = env.step({{"type": "call_tool", "tool_name": "{call['name']}", "arguments": {call['arguments']!r}}})
    print(step.observation["result"])  # the tool's JSON output
    final = env.step({{"type": "submit", "answer": '{{"days": []}}'}})  # your plan, as JSON text
    print(final.reward, final.done, final.observation["checks"])  # reward 1.0 only if every check passes
```

Plain HTTP: every request gets a fresh environment object, so send the reset observation's
`episode_id` with each step (the episode lives in the server's episode store):

```bash
{http}
```

Actions: `{{"type": "list_tools"}}`, `{{"type": "call_tool", "tool_name", "arguments"}}`,
`{{"type": "submit", "answer"}}` (ends the episode; reward = the verifier's score, 1 or 0, with
its `checks`). Reset takes `task_id` (or `seed`: task `seed % n` of the sorted ids). `GET /state`
is per WebSocket session; over plain HTTP each observation carries `episode_id` and `step`. At
most 64 concurrent WebSocket sessions (`ENVFACTORY_OPENENV_MAX_SESSIONS`). Without openenv:
`from envfactory_openenv import EnvfactoryCore`.
"""


register("openenv", write, "OpenEnv environment (openenv.yaml, server/app.py, pyproject.toml, Dockerfile)")
