"""mcp: a self-contained MCP server per export (stdio and streamable HTTP), and `factory serve`.

The export holds `mcp_server.py` + `envfactory_runtime.py` + `envs/<env_id>/...`; the server
exposes one environment (chosen with `--env` when there are several) and keeps episode state
per session (see the server's docstring). `mcp_servers.json` lists one stdio entry per
environment in the `{"mcpServers": {...}}` shape that MCP hosts and verl's MCP tools read.
"""

from __future__ import annotations

import json
from pathlib import Path

from envfactory.factory.errors import UsageError
from envfactory.factory.export import register
from envfactory.factory.export.common import (
    RUNTIME_DIR,
    InputBundle,
    copy_envs,
    copy_runtime,
    duckdb_requirement,
    load_source,
    max_tool_chars,
    write_card,
    write_settings,
)

__all__ = ["MCP_REQUIREMENT", "serve", "write"]

MCP_REQUIREMENT = "mcp>=2.3,<3"


def write(src: InputBundle, dest: Path, splits: dict) -> dict:
    limit = max_tool_chars(src)
    copy_envs(src, dest)
    copy_runtime(dest, "mcp_server.py")
    write_settings(dest, {"target": "mcp", "max_tool_response_chars": limit})
    servers = {f"envfactory-{e.env_id}": {"command": "python3", "args": ["mcp_server.py", "--env", e.env_id]}
               for e in src.envs}
    (dest / "mcp_servers.json").write_text(json.dumps({"mcpServers": servers}, indent=2) + "\n", encoding="utf-8")
    (dest / "requirements.txt").write_text(f"{MCP_REQUIREMENT}\n{duckdb_requirement(src)}\nuvicorn>=0.30\n",
                                                   encoding="utf-8")
    first = src.envs[0].env_id
    usage = f"""
```bash
pip install -r requirements.txt
python3 mcp_server.py --env {first}                                  # stdio
python3 mcp_server.py --env {first} --transport http --port 8000     # http://127.0.0.1:8000/mcp
```

Tools: the environment's own (schemas as generated, flat and all required) plus `start_task`,
`submit_answer` and `episode_state`. Episode state is per session: `_meta["envfactory/episode"]`,
else the HTTP `Mcp-Session-Id`, else the stdio process. `mcp_servers.json` holds one stdio
entry per environment (run from this directory).
"""
    write_card(dest, "mcp", src, splits, usage, None, limit)
    return {"max_tool_response_chars": limit, "servers": sorted(servers), "requires": MCP_REQUIREMENT}


def serve(path: str | Path, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8000,
          env_id: str | None = None) -> int:
    """Serve one environment directly from its bundle directory (no export written)."""
    import importlib.util

    src = load_source(path)  # validates the bundle (manifest hashes, files) with one-line errors
    if env_id is None and len(src.envs) > 1:
        raise UsageError(f"{path} holds {len(src.envs)} environments; pick one with --env "
                         f"({', '.join(e.env_id for e in src.envs)})")
    if env_id is not None and env_id not in {e.env_id for e in src.envs}:
        raise UsageError(f"no environment {env_id!r} in {path}")
    try:
        import mcp.server  # noqa: F401
    except ImportError:
        raise UsageError(f"factory serve needs the mcp package: pip install 'envfactory[mcp]' "
                         f"(or '{MCP_REQUIREMENT}')") from None
    spec = importlib.util.spec_from_file_location("_envfactory_mcp_server", RUNTIME_DIR / "mcp_server.py")
    mod = importlib.util.module_from_spec(spec)
    exec(compile(Path(spec.origin).read_bytes(), spec.origin, "exec"), mod.__dict__)  # writes no __pycache__
    args = ["--root", str(src.path), "--transport", transport, "--host", host, "--port", str(port)]
    if env_id:
        args += ["--env", env_id]
    return mod.main(args)


register("mcp", write, "self-contained MCP server script (stdio and streamable HTTP), per-session episodes")
