"""verifiers export: the package installs into a fresh venv (pip, hatchling build) and its
`load_environment()` returns the tasks; tools and scoring work from the installed copy."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import venv

import pytest

from .conftest import all_tasks, mutant

CHECK = r"""
import json, sys
import {module} as m
data = json.load(open(sys.argv[1]))
env = m.load_environment()
test = m.load_environment("test")
out = {{"type": type(env).__name__, "train": sorted(json.loads(r["info"])["task_id"] for r in env.dataset),
       "test": sorted(json.loads(r["info"])["task_id"] for r in test.dataset), "scores": [], "calls": []}}
for row in env.dataset + test.dataset:
    tid = json.loads(row["info"])["task_id"]
    eid = env.start(row)
    for c in data[tid]["calls"]:
        out["calls"].append(len(json.loads(m.TOOLS[c["name"]](**c["arguments"], episode_id=eid))["results"]))
    out["scores"].append([env.score(row, data[tid]["good"]), env.score(row, data[tid]["bad"])])
out["file"] = m.__file__
print(json.dumps(out))
"""


def test_package_installs_in_fresh_venv_and_loads(exports, bundle, tmp_path):
    out = exports["verifiers"]
    project = tomllib.loads((out / "pyproject.toml").read_text())
    module = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"][0]
    assert project["project"]["dependencies"] == ["duckdb>=1.1"]
    assert project["project"]["optional-dependencies"]["verifiers"][0].startswith("verifiers")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(out)],
                         capture_output=True, text=True, check=False, timeout=240)
    if pip.returncode != 0 and ("Could not find a version" in pip.stderr or "NewConnectionError" in pip.stderr):
        pytest.skip(f"no package index reachable for the fresh venv: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    data = {tid: {"calls": t["reference_tool_calls"], "good": json.dumps(t["reference_answer"]),
                  "bad": json.dumps(mutant(t["reference_answer"]))} for tid, t in tasks.items()}
    (tmp_path / "data.json").write_text(json.dumps(data))
    r = subprocess.run([str(py), "-c", CHECK.format(module=module), str(tmp_path / "data.json")], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path, check=False)  # cwd outside the export: the installed copy is used
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["file"].startswith(str(env_dir)) and res["type"] == "TaskSet"
    manifest = json.loads((out / "manifest.json").read_text())
    split_tasks = {s: sorted(tid for tid, t in tasks.items() if t["env_id"] in envs)
                   for s, envs in manifest["splits"].items()}
    assert res["train"] == split_tasks["train"] and res["test"] == split_tasks["test"]
    assert res["scores"] == [[1.0, 0.0]] * len(tasks)
    assert res["calls"] and all(n > 0 for n in res["calls"])


def test_load_environment_in_process(exports, monkeypatch):
    out = exports["verifiers"]
    monkeypatch.syspath_prepend(str(out))
    module = next(p.name for p in out.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    sys.modules.pop(module, None)
    m = __import__(module)
    assert len(m.load_tasks("all")) == len(m.load_tasks("train")) + len(m.load_tasks("test"))
    assert [json.loads(r["info"])["level"] for r in m.load_tasks("all", levels=[0])] == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown split"):
        m.load_tasks("validation")
    for fn in m.TOOLS.values():
        assert fn.__doc__ and "episode_id" in fn.__code__.co_varnames


LEGACY_CHECK = r"""
import asyncio, json, sys
import {module} as m
env = m.load_environment("train")
assert type(env).__mro__[1].__name__ == "StatefulToolEnv", type(env).__mro__
row = env.dataset[0]
names = [t["function"]["name"] for t in env.oai_tools]
hidden = [t for t in env.oai_tools if "episode_id" in t["function"]["parameters"]["properties"]]
state = asyncio.run(env.setup_state({{"info": row["info"], "prompt": row["prompt"], "answer": row["answer"]}}))
msg = asyncio.run(env.call_tool("list_cities", env.update_tool_args("list_cities", {{}}, [], state), "c1"))
score = [fn for r in env.rubric.rubrics for fn in r.funcs if fn.__name__ == "envfactory_score"][0]
good = json.loads(row["answer"])
bad = json.loads(row["answer"]); d = bad["days"]; d[0]["hotel"], d[1]["hotel"] = d[1]["hotel"], d[0]["hotel"]
s = [asyncio.run(score(completion=[{{"role": "assistant", "content": json.dumps(a)}}], info=row["info"])) for a in (good, bad)]
print(json.dumps({{"rows": len(env.dataset), "tools": names, "hidden": len(hidden), "results": len(json.loads(msg["content"])["results"]), "scores": s}}))
"""


@pytest.mark.skipif(not __import__("os").environ.get("ENVFACTORY_TEST_VERIFIERS_LIB"),
                    reason="opt-in (installs verifiers==0.1.9.post3 and its dependencies, ~2 min): "
                           "set ENVFACTORY_TEST_VERIFIERS_LIB=1")
def test_load_environment_with_the_verifiers_library(exports, tmp_path):
    out = exports["verifiers"]
    module = tomllib.loads((out / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"][0]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "verifiers==0.1.9.post3",
                          str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert pip.returncode == 0, pip.stderr[-3000:]
    r = subprocess.run([py, "-c", LEGACY_CHECK.format(module=module)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    train = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    assert res["rows"] == sum(len((out / module / "envs" / e / "tasks" / "tasks.jsonl").read_text().splitlines())
                              for e in train)
    assert res["hidden"] == 0 and "list_cities" in res["tools"] and res["results"] > 0
    assert res["scores"] == [1.0, 0.0]
