"""The verifiers export inside the real library, every API generation it supports: `vf-eval`
of the pip-installed (non-editable) package against a scripted OpenAI-compatible server on
127.0.0.1 (drivers/scripted_openai_server.py), on the oldest supported release (0.1.9.post3),
the last of the classic API (0.3.1) and the newest (0.4.0, `verifiers.v1`).

The server replays each train task's reference tool calls, one `tool_calls` entry a turn, then
answers by the task's position: the reference plan (reward 1), junk text or the reference with
two hotels swapped (reward 0). So one eval shows both sides, and the `tool` messages the
server was sent show that the library really ran the package's tools on the data.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import all_tasks, mutant
from tests.trainers.conftest import DRIVERS, run_driver

JUNK = "I could not settle on a plan, sorry."


def answer_modes(tasks: list[dict]) -> dict[str, str]:
    """task_id -> which answer the server gives: reference, junk, mutant in turn."""
    modes = ("reference", "junk", "mutant")
    return {t["task_id"]: modes[i % 3] for i, t in enumerate(sorted(tasks, key=lambda t: t["task_id"]))}


def write_script(tasks: list[dict], path: Path) -> dict[str, str]:
    modes = answer_modes(tasks)
    entries = []
    for t in tasks:
        answers = {"reference": json.dumps(t["reference_answer"]), "junk": JUNK,
                   "mutant": json.dumps(mutant(t["reference_answer"]))}
        prompt = next(m["content"] for m in t["messages"] if m["role"] == "user")
        entries.append({"prompt": prompt, "calls": t["reference_tool_calls"],
                        "answers": dict(answers, mixed=answers[modes[t["task_id"]]])})
    path.write_text(json.dumps({"tasks": entries}))
    return modes


@contextlib.contextmanager
def scripted_server(script: Path, log: Path):
    """The scripted server in a subprocess of ours; yields its /v1 base URL."""
    proc = subprocess.Popen([sys.executable, str(DRIVERS / "scripted_openai_server.py"), str(script), str(log),
                             "--max-seconds", "900"], stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(proc.stdout.readline())["port"]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def install_export(python: Path, export: Path) -> str:
    """pip-install the export (a wheel built from it, not editable) into a trainer venv; its module."""
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
                        "--no-deps", str(export)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return tomllib.loads((export / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "packages"][0]


def train_tasks(bundle: Path, export: Path) -> list[dict]:
    train = json.loads((export / "manifest.json").read_text())["splits"]["train"]
    return [t for t in all_tasks(bundle) if t["env_id"] in train]


def tool_names(bundle: Path) -> list[str]:
    return sorted({s["function"]["name"] for e in bundle.iterdir() if (e / "tools").is_dir()
                   for s in json.loads((e / "tools" / "tool_schemas.json").read_text())})


def check_tools_offered(log: Path, bundle: Path) -> None:
    """Every request offered the environments' tools under their own names, with their own
    parameters: the hidden `episode_id` never shows."""
    want = {s["function"]["name"]: sorted(s["function"]["parameters"].get("properties", {}))
            for e in bundle.iterdir() if (e / "tools").is_dir()
            for s in json.loads((e / "tools" / "tool_schemas.json").read_text())}
    for entry in map(json.loads, log.read_text().splitlines()):
        assert entry["tools_offered"] == want, entry["tools_offered"]


def check_tool_traffic(log: Path, tasks: list[dict], names_sent: bool) -> None:
    """Every rollout's last request carried one tool result per reference call, in order,
    each a JSON object with rows of the environment's data."""
    entries = [json.loads(l) for l in log.read_text().splitlines()]
    assert {e["task"] for e in entries} == set(range(len(tasks))), "some task was never asked for"
    for index, task in enumerate(tasks):  # the server numbers tasks in script order
        last = max((e for e in entries if e["task"] == index), key=lambda e: e["turn"])
        results = last["tool_messages"]
        assert len(results) == len(task["reference_tool_calls"]), task["task_id"]
        for call, msg in zip(task["reference_tool_calls"], results):
            if names_sent:
                assert msg["name"] == call["name"]
            rows = json.loads(msg["content"])["results"]
            assert isinstance(rows, list) and rows, msg["content"][:300]
            assert all(isinstance(r, dict) and r for r in rows), msg["content"][:300]


def _prepare(python, exports, bundle, tmp_path):
    """Install the export into the venv, script the server for the train tasks: (module, tasks,
    expected reward per task, a work directory)."""
    module = install_export(python, exports["verifiers"])
    tasks = train_tasks(bundle, exports["verifiers"])
    modes = write_script(tasks, tmp_path / "script.json")
    expected = {tid: 1.0 if m == "reference" else 0.0 for tid, m in modes.items()}
    work = tmp_path / "work"
    work.mkdir()
    return module, tasks, expected, work


CLASSIC = [("verifiers-0.1", "0.1.9.post3", []),
           ("verifiers-0.3", "0.3.1", ["--disable-env-server", "-d"])]  # in-process workers: the env server costs ~80 s


@pytest.mark.parametrize("venv,version,extra", CLASSIC, ids=[c[0] for c in CLASSIC])
def test_vf_eval_classic_api(trainer_python, exports, bundle, tmp_path, venv, version, extra):
    python = trainer_python(venv)
    module, tasks, expected, work = _prepare(python, exports, bundle, tmp_path)
    with scripted_server(tmp_path / "script.json", tmp_path / "log.jsonl") as url:
        res = run_driver(python, "verifiers_legacy.py", module, url, "mixed", work, json.dumps(extra), cwd=work)
    assert res["version"] == version and res["file"].startswith(str(python.parent.parent))
    assert res["module_file"].startswith(str(python.parent.parent)), "not the pip-installed copy"
    assert "StatefulToolEnv" in res["mro"]
    # Our rows: no `task` column (0.1.14 .. 0.3.1 read it as a JSON task payload), no info["env_id"]
    # (EnvGroup's route); 0.1.9 adds its own `task` column, the env id, when formatting the dataset.
    assert res["row_keys"] == ["answer", "info", "prompt"] and "env_id" not in res["info_keys"]
    assert sorted(res["tools"]) == tool_names(bundle) and res["tools_showing_episode_id"] == []
    assert res["rewards"] == expected, "env.evaluate_sync"
    assert res["cli"]["rewards"] == expected, "vf-eval"
    check_tools_offered(tmp_path / "log.jsonl", bundle)
    check_tool_traffic(tmp_path / "log.jsonl", tasks, names_sent=False)


def test_vf_eval_v1_api(trainer_python, exports, bundle, tmp_path):
    python = trainer_python("verifiers-0.4")
    module, tasks, expected, work = _prepare(python, exports, bundle, tmp_path)
    wheelhouse = python.parent.parent / "wheelhouse"  # the chat program's packages, kept with the venv
    with scripted_server(tmp_path / "script.json", tmp_path / "log.jsonl") as url:
        dist = tomllib.loads((exports["verifiers"] / "pyproject.toml").read_text())["project"]["name"]
        res = run_driver(python, "verifiers_v1.py", module, dist, url, "mixed", work, wheelhouse, cwd=work)
    assert res["version"] == "0.4.0" and res["module_file"].startswith(str(python.parent.parent))
    assert res["is_env"] and res["env"] == "EnvfactoryEnv" and res["taskset"] == "EnvfactoryTaskset"
    assert {"EnvfactoryTaskset", "EnvfactoryEnv", "EnvfactoryHarness"} <= set(res["exports"])
    assert res["harness_ids"] == {"agent": module} and "NullHarness" in res["harness_bases"]
    assert res["runtime"] == "subprocess" and res["max_turns"] == 2 * max(t["min_tool_calls"] for t in tasks) + 2
    assert res["tasks"] == sorted(expected)
    assert res["cli"]["errors"] == []
    assert res["cli"]["rewards"] == expected
    assert set(res["cli"]["stop_conditions"].values()) == {"agent_completed"}
    check_tools_offered(tmp_path / "log.jsonl", bundle)
    check_tool_traffic(tmp_path / "log.jsonl", tasks, names_sent=True)
