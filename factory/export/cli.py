"""`factory export` and `factory serve` subcommands (issue 4)."""

from __future__ import annotations

import sys

from envfactory.factory.errors import UsageError
from envfactory.factory.export import TARGETS


def cmd_export(a) -> int:
    from envfactory.factory.export import export

    res = export(a.path, a.to, a.out, a.test_fraction)
    counts = ", ".join(f"{k}: {len(v)} env(s)" for k, v in res.splits.items())
    print(f"{res.target}: {res.tasks} tasks ({counts}) -> {res.out}")
    if res.recorded_in:
        print(f"recorded in {res.recorded_in}", file=sys.stderr)
    return 0


def cmd_serve(a) -> int:
    from envfactory.factory.export.mcp_server import serve

    if a.transport not in ("stdio", "http"):
        raise UsageError(f"--transport must be stdio or http, got {a.transport!r}")
    if a.port is not None and not 0 < a.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {a.port}")
    if a.transport == "stdio" and a.port is not None:
        raise UsageError("--port applies to --transport http only")
    return serve(a.env_dir, a.transport, a.host, a.port if a.port is not None else 8000, a.env)


def register(sub) -> None:
    """Add the export/serve subparsers to the `factory` CLI's subparsers object."""
    e = sub.add_parser("export", help="export a bundle (or one environment) for an RL trainer")
    e.add_argument("path", metavar="PATH", help="a bundle directory or one environment directory")
    e.add_argument("--to", required=True, metavar="TARGET", help=f"target format: {', '.join(TARGETS)}")
    e.add_argument("--out", default=None, help="output directory (default PATH/exports/TARGET)")
    e.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of environments held out as the test split (default 0.2; splits are by environment)")
    e.set_defaults(fn=cmd_export)
    s = sub.add_parser("serve", help="serve one environment's tools over MCP")
    s.add_argument("env_dir", metavar="ENV_DIR", help="an environment directory (or a bundle with --env)")
    s.add_argument("--transport", default="stdio", help="stdio (default) or http (streamable HTTP at /mcp)")
    s.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    s.add_argument("--env", default=None, help="environment id, when ENV_DIR is a bundle of several")
    s.set_defaults(fn=cmd_serve)
