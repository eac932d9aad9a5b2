"""Drive a jsonl export's NeMo Gym rows and resources server through nemo-gym's own code.

    python jsonl_nemo_gym.py EXPORT_DIR DATA_JSON

DATA_JSON: {"tasks": {task_id: {"good", "bad" (response texts), "calls": [{name, arguments}]}},
"foreign_tool": a tool name outside the first task's tools or null}.

- Dataset: every line of nemo_gym/*.jsonl through `train_data_utils.compute_sample_metrics`
  (what `ng_prepare_data` runs on each row) and `BaseRunRequest.model_validate`.
- Server: `EnvfactoryResourcesServer` built as nemo-gym's own server tests build one (a
  config plus a mocked `ServerClient`: no other server is contacted), its FastAPI app driven in
  process with Starlette's `TestClient`, the way NeMo Gym's simple agent drives a resources
  server: `/seed_session` with the row, a POST per tool call, `/verify` with the row and a
  `NeMoGymResponse`; each rollout is a fresh client (a fresh session cookie).

Prints one JSON line with the measurements.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from unittest.mock import MagicMock


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def response(text):
    from nemo_gym.openai_utils import NeMoGymResponse, NeMoGymResponseOutputMessage, NeMoGymResponseOutputText

    return NeMoGymResponse(
        id="resp", created_at=0.0, model="policy", object="response", parallel_tool_calls=False,
        tool_choice="auto", tools=[],
        output=[NeMoGymResponseOutputMessage(id="msg", role="assistant", status="completed", type="message",
                                             content=[NeMoGymResponseOutputText(annotations=[], text=text,
                                                                                type="output_text")])],
    ).model_dump(mode="json")


def dataset(out: Path) -> dict:
    from nemo_gym.base_resources_server import BaseRunRequest
    from nemo_gym.train_data_utils import compute_sample_metrics

    rows, offending, tools_seen = 0, 0, []
    for path in sorted((out / "nemo_gym").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            metrics, bad = compute_sample_metrics(line)
            offending += bad
            rows += metrics.number_of_examples
            tools_seen.append(metrics.number_of_tools.max if metrics.number_of_tools else None)
            BaseRunRequest.model_validate(json.loads(line))
    return {"rows": rows, "offending": offending, "number_of_tools": tools_seen}


def rollout(app, row: dict, calls: list[dict], text: str) -> dict:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:  # in process: no socket is opened
        seeded = client.post("/seed_session", json=row)
        outputs = [client.post(f"/{c['name']}", json=c["arguments"]).json() for c in calls]
        verdict = client.post("/verify", json=dict(row, response=response(text)))
    body = verdict.json()
    return {"seed_status": seeded.status_code, "verify_status": verdict.status_code,
            "reward": body.get("reward"), "checks_passed": body.get("checks_passed"),
            "failed": [c["name"] for c in body.get("checks") or [] if not c["passed"]],
            "outputs_with_results": sum(bool(o.get("results")) for o in outputs),
            "outputs_with_error": sum("error" in o for o in outputs), "outputs": len(outputs)}


def main(out: Path, data: dict) -> dict:
    from nemo_gym.server_utils import ServerClient

    mod = load(out / "nemo_gym_resources_server.py", "envfactory_nemo_gym_server")
    config = mod.EnvfactoryResourcesServerConfig(host="127.0.0.1", port=8080, entrypoint="", name="envfactory")
    server = mod.EnvfactoryResourcesServer(config=config, server_client=MagicMock(spec=ServerClient))
    app = server.setup_webserver()
    rows = {r["task_id"]: r for p in sorted((out / "nemo_gym").glob("*.jsonl"))
            for r in map(json.loads, p.read_text(encoding="utf-8").splitlines())}
    tasks = data["tasks"]
    result = {"dataset": dataset(out), "tasks": {}}
    for task_id, t in tasks.items():
        row = rows[task_id]
        result["tasks"][task_id] = {"good": rollout(app, row, t["calls"], t["good"]),
                                    "bad": rollout(app, row, [], t["bad"]),
                                    "junk": rollout(app, row, [], "no plan today"),
                                    "hostile": rollout(app, row, [], "[" * 100000 + '{"days": 1}')}
    first = next(iter(tasks))
    foreign = data.get("foreign_tool")
    if foreign:
        result["foreign"] = rollout(app, rows[first], [{"name": foreign, "arguments": {}}], tasks[first]["bad"])
    unseeded = dict(rows[first], task_id="no-such-task", verifier_metadata={})
    result["unknown_task"] = rollout(app, unseeded, tasks[first]["calls"][:1], tasks[first]["good"])
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text(encoding="utf-8")))))
