"""verifiers export without the library: the package installs into a fresh venv (pip,
hatchling build) and its `load_environment()` returns a `TaskSet`; tools and scoring work from
the installed copy; completions score in every shape verifiers passes them (text, message
dicts, message objects, content parts). The library itself (0.1.9.post3, 0.3.1, 0.4.0) runs it
in tests/trainers/test_verifiers.py."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from .conftest import all_tasks, mutant

CHECK = r"""
import json, sys
import {module} as m


class Msg:  # the shape of verifiers' pydantic messages (0.1.11 on): attributes, not keys
    def __init__(self, role, content):
        self.role, self.content = role, content


def shapes(text):
    return [text, [{{"role": "user", "content": "plan it"}}, {{"role": "assistant", "content": text}}],
            [Msg("user", "plan it"), Msg("assistant", None), Msg("tool", "{{}}"), Msg("assistant", text)],
            [Msg("assistant", [{{"type": "text", "text": text}}])]]


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
    out.setdefault("shape_scores", []).extend(
        [m.score(tid, c) for c in shapes(data[tid]["good"])] + [m.score(tid, c) for c in shapes(data[tid]["bad"])])
out["file"] = m.__file__
out["version"] = m.verifiers_version()
out["verifiers_imported"] = any(k == "verifiers" or k.startswith("verifiers.") for k in sys.modules)
print(json.dumps(out))
"""


def test_package_installs_in_fresh_venv_and_loads(exports, bundle, tmp_path):
    out = exports["verifiers"]
    project = tomllib.loads((out / "pyproject.toml").read_text())
    module = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"][0]
    import duckdb

    major, minor = duckdb.__version__.split(".")[:2]  # the DuckDB that wrote the databases
    assert project["project"]["dependencies"] == [f"duckdb>={major}.{minor}"]
    assert project["project"]["optional-dependencies"]["verifiers"] == ["verifiers>=0.1.9.post3,<0.5"]
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
    # cwd outside the export: the installed copy is used
    r = subprocess.run([str(py), "-c", CHECK.format(module=module), str(tmp_path / "data.json")], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["file"].startswith(str(env_dir)) and res["type"] == "TaskSet"
    manifest = json.loads((out / "manifest.json").read_text())
    split_tasks = {s: sorted(tid for tid, t in tasks.items() if t["env_id"] in envs)
                   for s, envs in manifest["splits"].items()}
    assert res["train"] == split_tasks["train"] and res["test"] == split_tasks["test"]
    assert res["scores"] == [[1.0, 0.0]] * len(tasks)
    assert res["shape_scores"] == ([1.0] * 4 + [0.0] * 4) * len(tasks)
    assert res["calls"] and all(n > 0 for n in res["calls"])
    assert res["version"] is None and res["verifiers_imported"] is False


def load_module(out, monkeypatch):
    monkeypatch.syspath_prepend(str(out))
    module = next(p.name for p in out.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    for name in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
        sys.modules.pop(name)
    return __import__(module)


def test_load_environment_in_process(exports, monkeypatch):
    m = load_module(exports["verifiers"], monkeypatch)
    assert len(m.load_tasks("all")) == len(m.load_tasks("train")) + len(m.load_tasks("test"))
    assert [json.loads(r["info"])["level"] for r in m.load_tasks("all", levels=[0])] == [0, 0, 0]
    with pytest.raises(ValueError, match="unknown split"):
        m.load_tasks("validation")
    for fn in m.TOOLS.values():
        assert fn.__doc__ and "episode_id" in fn.__code__.co_varnames
    assert type(m.load_environment("train")).__name__ == "TaskSet"  # no verifiers distribution here


def test_rows_avoid_the_library_reserved_fields(exports, monkeypatch):
    """verifiers 0.1.14 .. 0.3.1 read a `task` column as a serialized task payload (a JSON
    object that replaces the row: a plain string fails), and `EnvGroup` routes by
    `info["env_id"]`: the rows carry neither."""
    m = load_module(exports["verifiers"], monkeypatch)
    for row in m.load_tasks("all"):
        assert sorted(row) == ["answer", "info", "prompt"]
        info = json.loads(row["info"])
        assert "env_id" not in info and "task" not in info
        assert sorted(info) == ["environment", "level", "solution_count", "task_id", "tools"]


def test_score_takes_every_completion_shape_and_never_raises(exports, bundle, monkeypatch):
    m = load_module(exports["verifiers"], monkeypatch)
    task = all_tasks(bundle)[0]
    good = json.dumps(task["reference_answer"])

    class Msg:
        def __init__(self, role, content):
            self.role, self.content = role, content

    for completion in (good, [{"role": "assistant", "content": good}], [Msg("assistant", good)],
                       [Msg("assistant", [{"type": "text", "text": good}])],
                       [Msg("assistant", good), Msg("user", "thanks")]):
        assert m.score(task["task_id"], completion) == 1.0, completion
    hostile = [None, 123, b"\xff\xfe", [None, 3], [Msg("assistant", None)],
               [Msg("assistant", good), Msg("assistant", "no")],
               json.dumps(mutant(task["reference_answer"])), "{" * 10_000, {"days": []}]
    for completion in hostile:
        assert m.score(task["task_id"], completion) == 0.0, repr(completion)[:80]
    assert m.score("no-such-task", good) == 0.0


def test_the_v1_module_is_valid_python_and_imported_only_on_demand(exports, monkeypatch):
    m = load_module(exports["verifiers"], monkeypatch)
    v1 = Path(m.__file__).parent / "vf_v1.py"
    compile(v1.read_text(), str(v1), "exec")
    assert not any(k.endswith(".vf_v1") for k in sys.modules)
    assert "EnvfactoryTaskset" not in m.__all__  # exported only when verifiers >= 0.4 is installed
    with pytest.raises(AttributeError):
        m.no_such_name
