"""OpenEnv's own client (`GenericEnvClient`, a WebSocket session) against a running export server,
in the flow the export's README shows.

    python openenv_client.py BASE_URL DATA_JSON

DATA_JSON: {"tasks": [{"task_id", "reference_tool_calls", "answers": {label: answer text}}]}.
For each task and answer: reset(task_id), call the reference tool calls, submit the answer.
Then a reset with an unknown task_id (the error it raises) and one more episode on the same
session (the session survives the error). Prints one JSON object: the installed openenv
distribution and version, and per episode the tool names, messages' roles, tool results,
reward, done, checks and the session state after it.
"""

import json
import sys
from importlib import metadata

from openenv.core import GenericEnvClient


def _distribution() -> dict:
    for dist in ("openenv", "openenv-core"):
        try:
            return {"distribution": dist, "version": metadata.version(dist)}
        except metadata.PackageNotFoundError:
            continue
    return {"distribution": None, "version": None}


def _episode(env, task: dict, answer: str) -> dict:
    first = env.reset(task_id=task["task_id"])
    obs = first.observation
    results = []
    for call in task["reference_tool_calls"]:
        step = env.step({"type": "call_tool", "tool_name": call["name"], "arguments": call["arguments"]})
        results.append({"result": step.observation["result"], "done": step.done, "reward": step.reward,
                        "error": step.observation.get("error")})
    final = env.step({"type": "submit", "answer": answer})
    return {"reset_done": first.done, "task_id": obs["task_id"], "episode_id": obs["episode_id"],
            "tools": [s["function"]["name"] for s in obs["tools"]], "roles": [m["role"] for m in obs["messages"]],
            "calls": results, "reward": final.reward, "done": final.done, "checks": final.observation["checks"],
            "state": env.state()}


def main() -> None:
    base_url, data_path = sys.argv[1], sys.argv[2]
    with open(data_path, encoding="utf-8") as f:
        data = json.load(f)
    out = dict(_distribution(), episodes=[])
    with GenericEnvClient(base_url=base_url).sync() as env:
        for task in data["tasks"]:
            for label, answer in task["answers"].items():
                out["episodes"].append(dict(_episode(env, task, answer), label=label, task=task["task_id"]))
        try:
            env.reset(task_id="no-such-task")
            out["unknown_task_error"] = None
        except Exception as e:  # the client raises on the server's error frame
            out["unknown_task_error"] = f"{type(e).__name__}: {e}"
        task = data["tasks"][0]
        out["after_error"] = _episode(env, task, task["answers"]["reference"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
