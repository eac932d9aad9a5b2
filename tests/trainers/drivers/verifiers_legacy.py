"""Driver: an installed envfactory verifiers export under the classic verifiers API
(0.1.9 up to 0.4; `verifiers.legacy` in 0.3), against a scripted model server.

    python verifiers_legacy.py MODULE BASE_URL MODEL WORKDIR [EXTRA_VF_EVAL_ARGS_JSON]

1. In process: `MODULE.load_environment("train")` must be a `vf.StatefulToolEnv` whose tool
   definitions hide `episode_id`; `env.evaluate_sync(...)` runs every train task against the
   server (the path that broke on 0.1.14 .. 0.3.1 when the rows had a `task` column).
2. The CLI: `vf-eval MODULE -m MODEL -b BASE_URL -k VAR -n -1 -r 1 -s` (plus the extra
   arguments) in WORKDIR; its saved `results.jsonl` gives each rollout's reward.

Prints one JSON line: the library version, the env's class chain, the tools shown to the
model, and {task_id: reward} for both runs. Does not import envfactory.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

KEY_VAR = "ENVFACTORY_SCRIPTED_KEY"


def tool_names(env) -> tuple[list[str], list[str]]:
    """(tool names, names of tools still showing `episode_id`): `tool_defs` (0.1.11 on, pydantic
    Tools) or `oai_tools` (before, OpenAI dicts)."""
    names, leaky = [], []
    for t in getattr(env, "tool_defs", None) or getattr(env, "oai_tools", None) or []:
        fn = t.get("function", t) if isinstance(t, dict) else t
        name = fn["name"] if isinstance(fn, dict) else fn.name
        params = fn["parameters"] if isinstance(fn, dict) else fn.parameters
        names.append(name)
        if "episode_id" in (params or {}).get("properties", {}):
            leaky.append(name)
    return names, leaky


def rewards_by_task(rows) -> dict[str, float]:
    out = {}
    for info, reward in rows:
        info = json.loads(info) if isinstance(info, str) else info
        out[info["task_id"]] = reward
    return out


def in_process(module: str, base_url: str, model: str) -> dict:
    import verifiers as vf

    mod = __import__(module)
    env = mod.load_environment("train")
    annotation = str(inspect.signature(env.evaluate_sync).parameters["client"].annotation)
    if "ClientConfig" in annotation:  # 0.1.14 on
        from verifiers.types import ClientConfig

        client = ClientConfig(api_key_var=KEY_VAR, api_base_url=base_url)
    else:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=base_url, api_key="scripted")
    res = env.evaluate_sync(client=client, model=model, num_examples=-1, rollouts_per_example=1)
    if "outputs" in res:  # 0.1.14 on: one dict per rollout (0.1.9: one list per field)
        rows = [(o["info"], o["reward"]) for o in res["outputs"]]
    else:
        rows = list(zip(res["info"], res["reward"]))
    names, leaky = tool_names(env)
    row = mod.load_tasks("train")[0]
    return {"version": getattr(vf, "__version__", "?"), "file": vf.__file__, "module_file": mod.__file__,
            "mro": [c.__name__ for c in type(env).__mro__], "columns": list(env.dataset.column_names),
            "row_keys": sorted(row), "info_keys": sorted(json.loads(row["info"])),
            "tools": names, "tools_showing_episode_id": leaky, "rewards": rewards_by_task(rows)}


def cli(module: str, base_url: str, model: str, workdir: Path, extra: list[str]) -> dict:
    vf_eval = Path(sys.executable).parent / "vf-eval"
    cmd = [str(vf_eval), module, "-m", model, "-b", base_url, "-k", KEY_VAR, "-n", "-1", "-r", "1", "-s", *extra]
    r = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=480, check=False,
                       env=dict(os.environ, **{KEY_VAR: "scripted"}))
    results = sorted(workdir.rglob("results.jsonl"))
    if r.returncode != 0 or len(results) != 1:
        raise SystemExit(f"vf-eval exited {r.returncode}, results files {results}\n"
                         f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    lines = [json.loads(l) for l in results[0].read_text().splitlines() if l.strip()]
    return {"cmd": cmd[1:], "rewards": rewards_by_task((row["info"], row["reward"]) for row in lines),
            "results": str(results[0])}


def main() -> None:
    module, base_url, model, workdir = sys.argv[1:5]
    extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else []
    out = in_process(module, base_url, model)
    out["cli"] = cli(module, base_url, model, Path(workdir), extra)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
