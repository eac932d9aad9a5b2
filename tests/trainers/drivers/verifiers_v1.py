"""Driver: an installed envfactory verifiers export under verifiers >= 0.4 (`verifiers.v1`),
against a scripted model server.

    python verifiers_v1.py MODULE TASKSET_ID BASE_URL MODEL WORKDIR WHEELHOUSE

1. In process: `MODULE.load_environment("train")` must be the package's `EnvfactoryEnv` over
   its `EnvfactoryTaskset`, with the package's harness (the library's `null` chat loop).
2. The CLI: `vf-eval TASKSET_ID -m MODEL --client.base-url BASE_URL ... --no-push` in WORKDIR (the
   id as the export's README gives it: the distribution name, which verifiers maps to MODULE). Each
   rollout runs the library's chat program as a uv script in a local subprocess and the
   package's MCP tool server as another. The chat program's packages come from WHEELHOUSE
   (downloaded once with this venv's pip), so uv installs them without reaching an index.

Prints one JSON line: the library version, the env/taskset/harness classes, and for the CLI run
{task_id: reward}, the trace errors and the stop conditions. Does not import envfactory.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

KEY_VAR = "ENVFACTORY_SCRIPTED_KEY"
RUN_NAME = "envfactory-scripted"


def in_process(module: str) -> dict:
    import verifiers
    import verifiers.v1 as vf

    mod = __import__(module)
    env = mod.load_environment("train")
    tasks = list(env.taskset)
    harness_ids = {role: h.id for role, h in env.config.agent_harnesses().items()}
    harness_mod = vf.import_harness(harness_ids["agent"])
    harness_cls = [getattr(harness_mod, n) for n in harness_mod.__all__
                   if isinstance(getattr(harness_mod, n), type) and issubclass(getattr(harness_mod, n), vf.Harness)]
    return {"version": verifiers.__version__, "file": verifiers.__file__, "module_file": mod.__file__,
            "is_env": isinstance(env, vf.Env), "env": type(env).__name__, "taskset": type(env.taskset).__name__,
            "harness_ids": harness_ids, "harness_bases": [c.__name__ for c in harness_cls[0].__mro__],
            "runtime": env.config.agent.runtime.type, "max_turns": env.config.agent.max_turns,
            "tasks": sorted(t.data.task_id for t in tasks), "exports": list(mod.__all__)}


def chat_program_requirements() -> list[str]:
    """The dependencies of the library's bundled chat program (its PEP 723 header)."""
    from verifiers.v1.harnesses.utils.launch import CHAT_PROGRAM

    match = re.search(r"^# dependencies = (\[.*\])$", CHAT_PROGRAM, re.M)
    return ast.literal_eval(match.group(1))


def ensure_wheelhouse(wheelhouse: Path) -> None:
    reqs = chat_program_requirements()
    stamp = wheelhouse / ".complete"
    if stamp.is_file() and stamp.read_text() == json.dumps(reqs):
        return
    wheelhouse.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--only-binary", ":all:", "-d", str(wheelhouse), *reqs],
                       capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        raise SystemExit(f"pip download of the chat program's packages failed:\n{r.stderr[-3000:]}")
    stamp.write_text(json.dumps(reqs))


def cli(taskset_id: str, base_url: str, model: str, workdir: Path, wheelhouse: Path) -> dict:
    ensure_wheelhouse(wheelhouse)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, **{
        KEY_VAR: "scripted",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's uv
        "UV_NO_INDEX": "1", "UV_FIND_LINKS": str(wheelhouse), "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": sys.executable, "UV_CACHE_DIR": str(wheelhouse.parent / "uv-cache")})
    out_dir = workdir / "outputs"
    cmd = [str(bin_dir / "vf-eval"), taskset_id, "-m", model, "--client.base-url", base_url,
           "--client.api-key-var", KEY_VAR, "--no-push", "--no-rich", "-o", str(out_dir),
           "--run.name", RUN_NAME, "-c", "4"]
    r = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=540, check=False, env=env)
    traces_file = out_dir / RUN_NAME / "traces.jsonl"
    if r.returncode != 0 or not traces_file.is_file():
        raise SystemExit(f"vf-eval exited {r.returncode} ({traces_file} missing?)\n"
                         f"{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    rewards, errors, stops = {}, [], {}
    for line in traces_file.read_text().splitlines():
        episode = json.loads(line)
        errors += [e.get("message", "")[:500] for e in episode.get("errors", [])]
        for trace in episode.get("traces", []):
            tid = trace["task"]["data"]["task_id"]
            reward = trace.get("rewards", {}).get("envfactory_score")
            rewards[tid] = reward["score"] * reward.get("weight", 1.0) if reward else None
            stops[tid] = trace.get("stop_condition")
            errors += [e.get("message", "")[:500] for e in trace.get("errors", [])]
    return {"cmd": cmd[1:], "rewards": rewards, "errors": errors, "stop_conditions": stops}


def main() -> None:
    module, taskset_id, base_url, model, workdir, wheelhouse = sys.argv[1:7]
    out = in_process(module)
    out["cli"] = cli(taskset_id, base_url, model, Path(workdir), Path(wheelhouse))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
