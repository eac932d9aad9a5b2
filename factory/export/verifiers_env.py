"""verifiers: an installable package for PrimeIntellect verifiers, of every API generation.

The export is a project directory: `pyproject.toml` (hatchling; depends on duckdb only, the
library is the optional extra `[verifiers]`, `verifiers>=VF_MIN_SPEC,<VF_NEXT`), the package `<module>/`
(`__init__.py` from `templates/verifiers_init.py.j2`: tool functions, `load_tasks`, `score`,
`load_environment`; `vf_v1.py` from `templates/verifiers_v1.py.j2`), the runtime and the
environments' data.

Which API `load_environment()` serves follows the installed release (read from its metadata):
- verifiers >= 0.4 (`verifiers.v1`): no `load_environment` contract there; an installed package
  is a plugin that exports a `Taskset` (and may export an `Env` and a `Harness`) through
  `__all__`, and `vf-eval <package>` builds the env from them. Tools are MCP tool servers, one
  process per rollout; rewards are `@vf.reward` methods of the task. Our `load_environment`
  returns the library's `Env` for the package's taskset.
- 0.1.9 up to 0.4 (the classic API, `verifiers.legacy` in 0.3): `vf.StatefulToolEnv` over a
  datasets.Dataset with columns `prompt`, `answer`, `info`; a rubric of reward functions. Rows
  carry no `task` column (0.1.14 on read it as a JSON task payload that replaces the row) and no
  `info["env_id"]` (`EnvGroup` routes by it).
- without the library: a `TaskSet` (the same rows, the tools and a `score` method), so the
  package stays usable and testable without the library's heavy dependencies.

The range is the one tested: tests/trainers/test_verifiers.py runs `vf-eval` of each API on
0.1.9.post3, 0.3.1 and 0.4.0 against a scripted model server.
"""

from __future__ import annotations

import re
from pathlib import Path

from envfactory.factory.export import register
from envfactory.factory.export.common import (
    duckdb_requirement,
    InputBundle,
    copy_envs,
    copy_runtime,
    json_text,
    max_tool_chars,
    py_annotation,
    render,
    union_schemas,
    write_card,
    write_settings,
)

__all__ = ["VF_MIN", "VF_NEXT", "VF_V1", "package_names", "write"]


def package_names(src: InputBundle) -> tuple[str, str]:
    """(distribution name, module name): envfactory-<env id> for one environment, else
    envfactory-<seeds>-<n>envs."""
    base = src.envs[0].env_id if len(src.envs) == 1 else f"{'-'.join(src.seeds)}-{len(src.envs)}envs"
    dist = "envfactory-" + re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return dist, dist.replace("-", "_")


# The supported releases: the classic API from 0.1.9 (the oldest tested build, 0.1.9.post3, is
# the pin's floor), the `verifiers.v1` API from 0.4.0 (its first release without the classic
# one), below 0.5 (an untested API may change again).
VF_MIN = (0, 1, 9)
VF_MIN_SPEC = "0.1.9.post3"
VF_V1 = (0, 4, 0)
VF_NEXT = (0, 5)


def _doc(text: str) -> str:
    """Text safe inside a triple-quoted docstring."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _tool_context(schema: dict) -> dict:
    """What the templates need of one tool: its signature (required arguments first; optional
    ones default to None and are left out of the call), the argument dict, docs."""
    fn = schema["function"]
    props = fn["parameters"].get("properties", {})
    required = set(fn["parameters"].get("required", list(props)))
    args, optional, params = [], [], []
    for name, p in props.items():
        ann = py_annotation(fn["name"], name, p)
        if name in required:
            args.append(f"{name}: {ann}")
        else:
            optional.append(f"{name}: {ann} | None = None")
        params.append({"name": name, "doc": _doc(p.get("description", name))})
    return {"name": fn["name"], "doc": _doc(fn.get("description", fn["name"])), "params": params,
            "signature": ", ".join([*args, *optional, "episode_id: str = ''"]),
            "args": "{" + ", ".join(f"{n!r}: {n}" for n in props) + "}"}


def _version(v: tuple) -> str:
    return ".".join(map(str, v))


def write(src: InputBundle, dest: Path, splits: dict) -> dict:
    schemas = union_schemas(src)
    dist, module = package_names(src)
    pkg = dest / module
    pkg.mkdir()
    limit = max_tool_chars(src)
    copy_envs(src, pkg)
    copy_runtime(pkg)
    write_settings(pkg, {"target": "verifiers", "max_tool_response_chars": limit, "splits": splits})
    names = [s["function"]["name"] for s in schemas]
    max_turns = 2 * max(t["min_tool_calls"] for t in src.tasks) + 2
    ctx = {"n_tasks": len(src.tasks), "n_envs": len(src.envs), "splits": json_text(splits),
           "max_turns": max_turns, "tools": [_tool_context(s) for s in schemas], "dist": dist, "module": module,
           "vf_legacy_min": _version(VF_MIN), "vf_v1_min": _version(VF_V1),
           "vf_legacy_min_tuple": ", ".join(map(str, VF_MIN)), "vf_v1_min_tuple": ", ".join(map(str, VF_V1))}
    render("verifiers_init.py.j2", pkg / "__init__.py", **ctx)
    render("verifiers_v1.py.j2", pkg / "vf_v1.py", **ctx)
    (dest / "pyproject.toml").write_text(f'''[build-system]
requires = ["hatchling>=1.18"]
build-backend = "hatchling.build"

[project]
name = "{dist}"
version = "0.1.0"
description = "envfactory tasks ({', '.join(src.seeds)}) as a verifiers environment"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["{duckdb_requirement(src)}"]
tags = ["envfactory", "tool-use", "multi-turn"]

[project.optional-dependencies]
verifiers = ["verifiers>={VF_MIN_SPEC},<{_version(VF_NEXT)}"]

[tool.hatch.build.targets.wheel]
packages = ["{module}"]

[tool.verifiers.eval]
num_examples = 5
rollouts_per_example = 3
''', encoding="utf-8")
    usage = f"""
```bash
pip install ./                 # the package alone: load_environment() returns a TaskSet
pip install './[verifiers]'    # with verifiers {VF_MIN_SPEC} .. <{_version(VF_NEXT)}
vf-eval {dist} -m MODEL --client.base-url URL --no-push        # verifiers >= {_version(VF_V1)} (needs uv)
vf-eval {module} -m MODEL -b URL -k KEY_VAR -n 5 -r 1     # verifiers < {_version(VF_V1)}
```

`load_environment(split="train" | "test" | "all", levels=None, max_turns=None, **kwargs)`:
- verifiers >= {_version(VF_V1)}: the library's `Env` over the package's `Taskset` (`vf_v1.py`; also what
  `vf-eval {dist}` builds): one agent seat, by default the library's tool-calling chat loop (no
  shell) in a local subprocess, at most {max_turns} turns (`--env.agent.max-turns`); the tools
  {', '.join(names)} are served per rollout by an MCP tool server; reward `envfactory_score`
  (the task's verifier; its checks in `trace.info["envfactory_checks"]`). Taskset options:
  `--env.taskset.split`, `--env.taskset.levels`. The library prepares its chat loop with
  `uv sync --script` (openai, mcp, httpx, ...): `uv` on PATH, and a package index or
  `UV_FIND_LINKS` + `UV_NO_INDEX=1` for offline machines.
- verifiers {VF_MIN_SPEC} up to {_version(VF_V1)}: a `vf.StatefulToolEnv`; dataset columns `prompt`, `answer`
  (reference plan, JSON text; one feasible plan of many), `info` (JSON text: task_id,
  environment, level, tools, solution_count); the tools with a hidden `episode_id`; rubric:
  the task's verifier.
- without verifiers: a `TaskSet` with the same rows, the tools and `score`.
"""
    write_card(dest, "verifiers", src, splits, usage, None, limit)
    return {"max_tool_response_chars": limit, "distribution": dist, "module": module, "tools": names}


register("verifiers", write, "installable verifiers package with load_environment(...)")
