"""OpenEnv, both supported versions (openenv-core 0.3.0 and openenv 0.10.0, each in its venv):
the export's server started from the export directory with that venv's Python on 127.0.0.1
and a free port (stopped after the module), then

- OpenEnv's own client (GenericEnvClient over its WebSocket) in the README's flow: the reference
  tool calls return data, the reference answer earns reward 1.0, a mutant and junk 0.0;
- plain HTTP as the README documents it (reset, then steps carrying the episode_id), including
  the README's own snippets run as written;
- an unknown task_id: HTTP 422 with the reason (and a raised error on the WebSocket);
- each version's `openenv validate`, on the directory and on the running server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import all_tasks, free_port, mutant
from tests.trainers.conftest import run_driver

# venv name -> (distribution, version) its SPECS entry pins
VERSIONS = {"openenv-core": ("openenv-core", "0.3.0"), "openenv": ("openenv", "0.10.0")}
JUNK = "I could not find a plan that satisfies every requirement."
UV_LOCK_ISSUE = "Missing uv.lock - run 'uv lock' to generate it"


@dataclass
class Server:
    venv: str
    python: Path
    out: Path
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _env() -> dict:
    # no bytecode: the export's manifest must keep matching its files
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for k in ("PYTHONPATH", "ENVFACTORY_OPENENV_HOST", "ENVFACTORY_OPENENV_PORT", "ENABLE_WEB_INTERFACE"):
        env.pop(k, None)
    return env


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{proc.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.loads(r.read()).get("status") == "healthy":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server not healthy after {timeout} s")


@pytest.fixture(scope="module", params=list(VERSIONS))
def server(request, exports, trainer_python):
    python = trainer_python(request.param)
    out = exports["openenv"]
    port = free_port()
    proc = subprocess.Popen([str(python), "-m", "server.app", "--port", str(port)], cwd=out, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    srv = Server(request.param, python, out, port, proc)
    try:
        _wait_healthy(proc, srv.url)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _limit(out: Path) -> int:
    return json.loads((out / "export.json").read_text())["max_tool_response_chars"]


def _sample(bundle) -> list[dict]:
    tasks = all_tasks(bundle)
    return tasks[:2] + tasks[-1:]  # the easiest two of one environment, the hardest of another


def _assert_call_results(results: list[str], limit: int) -> None:
    assert results
    for text in results:
        assert len(text) <= limit
        assert json.loads(text)["results"], text[:300]  # every reference call returns rows


def test_openenv_client_rewards(server, bundle, tmp_path):
    """OpenEnv's GenericEnvClient (WebSocket): reference 1.0, mutant and junk 0.0, tool data, state."""
    sample = _sample(bundle)
    data = {"tasks": [{"task_id": t["task_id"], "reference_tool_calls": t["reference_tool_calls"],
                       "answers": {"reference": json.dumps(t["reference_answer"]),
                                   "mutant": json.dumps(mutant(t["reference_answer"])), "junk": JUNK}}
                      for t in sample]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    res = run_driver(server.python, "openenv_client.py", server.url, tmp_path / "data.json", timeout=300)
    assert (res["distribution"], res["version"]) == VERSIONS[server.venv]
    by_id = {t["task_id"]: t for t in sample}
    expected = {"reference": 1.0, "mutant": 0.0, "junk": 0.0}
    assert sorted((e["task"], e["label"]) for e in res["episodes"]) == sorted(
        (t["task_id"], label) for t in sample for label in expected)
    limit = _limit(server.out)
    for ep in res["episodes"]:
        t = by_id[ep["task"]]
        assert ep["task_id"] == t["task_id"] and ep["reset_done"] is False
        assert ep["tools"] == t["tools"] and ep["roles"] == [m["role"] for m in t["messages"]]
        assert all(c["done"] is False and c["error"] is None and c["reward"] == 0.0 for c in ep["calls"])
        _assert_call_results([c["result"] for c in ep["calls"]], limit)
        assert ep["done"] is True and ep["reward"] == expected[ep["label"]], (ep["label"], ep["checks"])
        assert all(c["passed"] for c in ep["checks"]) is (ep["label"] == "reference")
        state = ep["state"]
        assert state["episode_id"] == ep["episode_id"] and state["task_id"] == t["task_id"]
        assert state["step_count"] == len(t["reference_tool_calls"]) + 1 and state["done"] is True
        assert state["score"] == expected[ep["label"]]
    assert len({e["episode_id"] for e in res["episodes"]}) == len(res["episodes"])
    assert "unknown task_id 'no-such-task'" in res["unknown_task_error"]
    assert res["after_error"]["reward"] == 1.0  # the session survives the error
    # the declared resources (openenv.yaml) hold for the server process after these episodes
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{server.proc.pid}/status").read_text()).group(1))
    declared = yaml.safe_load((server.out / "openenv.yaml").read_text())["validation"]["resources"]["memory_mb"]
    assert rss_kb / 1024 < declared, (rss_kb, declared)


def _http_episode(url: str, task: dict, answer: str) -> tuple[str, list[dict]]:
    status, first = _post(url + "/reset", {"task_id": task["task_id"]})
    assert status == 200 and first["done"] is False
    eid = first["observation"]["episode_id"]
    steps = [_post(url + "/step", {"episode_id": eid, "action": {"type": "call_tool", "tool_name": c["name"],
                                                                  "arguments": c["arguments"]}})
             for c in task["reference_tool_calls"]]
    steps.append(_post(url + "/step", {"episode_id": eid, "action": {"type": "submit", "answer": answer}}))
    assert all(s == 200 for s, _ in steps)
    return eid, [b for _, b in steps]


def test_plain_http_flow(server, bundle):
    """POST /reset, then POST /step with the episode_id: state kept between requests, per episode."""
    limit = _limit(server.out)
    ids = set()
    for t in _sample(bundle):
        ref = t["reference_answer"]
        for answer, reward in ((json.dumps(ref), 1.0), (json.dumps(mutant(ref)), 0.0)):
            eid, steps = _http_episode(server.url, t, answer)
            ids.add(eid)
            calls, final = steps[:-1], steps[-1]
            assert [s["observation"]["step"] for s in steps] == list(range(1, len(steps) + 1))
            assert all(s["done"] is False and s["observation"]["episode_id"] == eid for s in calls)
            _assert_call_results([s["observation"]["result"] for s in calls], limit)
            assert final["done"] is True and final["reward"] == reward
            over = _post(server.url + "/step", {"episode_id": eid, "action": {"type": "list_tools"}})[1]
            assert over["done"] is True and over["observation"]["error"].startswith("episode is over")
    assert len(ids) == 2 * len(_sample(bundle))
    # two episodes interleaved keep their own tasks and step counts
    a, b = all_tasks(bundle)[0], all_tasks(bundle)[-1]
    ea = _post(server.url + "/reset", {"task_id": a["task_id"]})[1]["observation"]["episode_id"]
    eb = _post(server.url + "/reset", {"task_id": b["task_id"]})[1]["observation"]["episode_id"]
    lb = _post(server.url + "/step", {"episode_id": eb, "action": {"type": "list_tools"}})[1]["observation"]
    assert [s["function"]["name"] for s in lb["tools"]] == b["tools"] and lb["step"] == 1
    fa = _post(server.url + "/step", {"episode_id": ea, "action": {"type": "submit",
                                                                   "answer": json.dumps(a["reference_answer"])}})[1]
    assert fa["reward"] == 1.0 and fa["observation"]["step"] == 1
    # without an id (or with an unknown one) a step says what to do, and ends nothing else
    none = _post(server.url + "/step", {"action": {"type": "list_tools"}})[1]
    assert none["done"] is True and "send the reset observation's episode_id" in none["observation"]["error"]
    bogus = _post(server.url + "/step", {"episode_id": "nope", "action": {"type": "list_tools"}})[1]
    assert "unknown episode_id 'nope'" in bogus["observation"]["error"]
    fb = _post(server.url + "/step", {"episode_id": eb, "action": {"type": "submit",
                                                                   "answer": json.dumps(b["reference_answer"])}})[1]
    assert fb["reward"] == 1.0 and fb["observation"]["step"] == 2
    assert [t["task_id"] for t in _get(server.url + "/tasks")] == sorted(t["task_id"] for t in all_tasks(bundle))


def _readme_block(out: Path, lang: str) -> str:
    text = (out / "README.md").read_text()
    blocks = re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)
    return next(b for b in blocks if "127.0.0.1" in b)


def test_readme_snippets_run_as_written(server, tmp_path):
    """The card's Python client snippet and its curl lines, run against the server (port swapped in)."""
    code = _readme_block(server.out, "python").replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    (tmp_path / "snippet.py").write_text(code)
    r = subprocess.run([str(server.python), str(tmp_path / "snippet.py")], capture_output=True, text=True,
                       timeout=120, env=_env(), check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result, final = r.stdout.strip().splitlines()
    assert json.loads(result)["results"]  # the first reference call returns rows
    assert final.startswith("0.0 True [")  # the snippet submits the placeholder `{"days": []}`
    # the curl lines: each -d body to its path, the reset's episode_id put where the card says <id>
    lines = _readme_block(server.out, "bash").replace("\\\n", " ")
    calls = re.findall(r"curl -s -X POST 127\.0\.0\.1:8000(/\w+) .*?-d '(.*?)'", lines)
    assert [p for p, _ in calls] == ["/reset", "/step", "/step"]
    eid, bodies = None, []
    for path, body in calls:
        status, resp = _post(server.url + path, json.loads(body.replace("<id>", eid or "<id>")))
        assert status == 200, resp
        eid = eid or resp["observation"]["episode_id"]
        bodies.append(resp)
    assert json.loads(bodies[1]["observation"]["result"])["results"] and bodies[1]["done"] is False
    assert bodies[2]["done"] is True and bodies[2]["reward"] == 0.0
    assert bodies[2]["observation"]["checks"][0]["passed"] is False


def test_unknown_task_is_a_client_error(server):
    for body in ({"task_id": "no-such-task"}, {"task_id": 5}):
        status, resp = _post(server.url + "/reset", body)
        assert status == 422 and "unknown task_id" in resp["detail"], resp
    status, resp = _post(server.url + "/reset", {"seed": -1})
    assert status == 422  # openenv's own request validation
    assert _post(server.url + "/reset", {"seed": 3})[0] == 200


def test_binds_loopback_only(server):
    """Started without --host: 127.0.0.1 answers, another loopback address (same interface) does not."""
    assert _get(server.url + "/health")["status"] == "healthy"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.2:{server.port}/health", timeout=5)


def _openenv(server, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(server.python.parent / "openenv"), "validate", *args], capture_output=True, text=True,
                          timeout=300, env=_env(), check=False)


def test_openenv_validate(server):
    """Each version's `openenv validate`: the directory (what it grades) and the running server."""
    r = _openenv(server, "--url", server.url, "--json")
    report = json.loads(r.stdout[r.stdout.index("{"):])
    assert r.returncode == 0 and report["passed"] is True, r.stdout[-3000:]
    assert {c["id"] for c in report["criteria"]} >= {"health_endpoint", "schema_endpoint", "mode_endpoint_consistency"}
    out = str(server.out)
    if server.venv == "openenv":
        r = _openenv(server, out)
        assert r.returncode == 0 and "PASS  static.manifest" in r.stdout and "Verdict: WARN" in r.stdout, r.stdout
        assert "missing validation.execution declaration" in r.stdout  # the Docker runtime level, skipped
        r = _openenv(server, out, "--level", "static", "--json")
        report = json.loads(r.stdout)
        assert r.returncode == 0 and report["verdict"] == "pass", r.stdout[-3000:]
        assert [(c["check_id"], c["status"]) for c in report["results"]] == [("static.manifest", "pass")]
    else:
        # 0.3 wants a uv.lock besides; an export cannot ship one (a resolution against the
        # package index, made by `uv lock`): every other requirement is met
        r = _openenv(server, out, "--json")
        report = json.loads(r.stdout)
        assert report["issues"] == [UV_LOCK_ISSUE], report["issues"]
