"""Shared behaviour of every exporter: environment-level splits, manifests, dataset cards,
answer extraction, output limits, and the CLI's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from envfactory.factory.bundle import sha256_file, verify_manifest
from envfactory.factory.errors import UsageError
from envfactory.factory.export import export, targets
from envfactory.factory.export.common import split_envs

from .conftest import TARGETS, env_dirs, tasks_of

RUNTIME = Path(__file__).resolve().parents[2] / "factory" / "export" / "runtime" / "envfactory_runtime.py"


def _runtime_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_rt_test", RUNTIME)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_target_is_registered_and_documented():
    assert set(targets()) == set(TARGETS)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text()
    for t in TARGETS:
        assert f"## {t}" in doc, t


def test_split_by_environment():
    ids = [f"env-{i}" for i in range(10)]
    s = split_envs(ids, 0.2)
    assert len(s["test"]) == 2 and len(s["train"]) == 8
    assert not set(s["train"]) & set(s["test"]) and set(s["train"]) | set(s["test"]) == set(ids)
    assert split_envs(list(reversed(ids)), 0.2)["test"] == sorted(s["test"], key=ids[::-1].index)
    # membership depends on the id alone: adding environments never moves one out of test
    more = split_envs(ids + [f"env-{i}" for i in range(10, 40)], 0.2)
    assert len(more["test"]) == 8
    assert split_envs(["only"], 0.2) == {"train": ["only"], "test": []}
    assert split_envs(ids[:3], 0.0)["test"] == []
    with pytest.raises(UsageError):
        split_envs(ids, 1.0)


@pytest.mark.parametrize("target", TARGETS)
def test_export_manifest_hashes_every_file_and_card(exports, bundle, target):
    out = exports[target]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == target and verify_manifest(out) == []
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) == files
    (out / "README.md").write_text((out / "README.md").read_text() + " ")
    try:
        assert verify_manifest(out) == ["hash mismatch: README.md"]
    finally:
        (out / "README.md").write_text((out / "README.md").read_text()[:-1])
    envs = [e.name for e in env_dirs(bundle)]
    assert sorted(manifest["sources"]) == envs
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    assert len(test) == 1 and sorted(train + test) == envs and not set(train) & set(test)
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert target in front["tags"] and front["size_categories"] == ["n<1K"]
    for env in envs:
        assert env in card
    for cfg in front.get("configs", []):
        for df in cfg["data_files"]:
            assert (out / df["path"]).is_file()
    settings = next(out.rglob("export.json"))
    assert json.loads(settings.read_text())["max_tool_response_chars"] == 4000


def test_export_inside_an_environment_is_recorded_in_its_manifest(bundle, tmp_path):
    import shutil

    env = tmp_path / env_dirs(bundle)[0].name
    shutil.copytree(env_dirs(bundle)[0], env)
    res = export(env, "jsonl")
    assert res.out == env / "exports" / "jsonl" and res.recorded_in == env / "manifest.json"
    manifest = json.loads((env / "manifest.json").read_text())
    assert manifest["exports"]["jsonl"]["manifest_sha256"] == sha256_file(res.out / "manifest.json")
    assert "exports/jsonl/slime/train.jsonl" in manifest["files"]
    assert verify_manifest(env) == []
    assert res.splits == {"train": [env.name], "test": []}
    export(env, "jsonl")  # exporting again replaces the export and its manifest entries
    assert verify_manifest(env) == []
    (env / "exports" / "jsonl" / "rewards.py").write_text("tampered")
    assert verify_manifest(env) == ["hash mismatch: exports/jsonl/rewards.py"]


def test_extract_answer_takes_the_last_plan_not_tool_traffic():
    rt = _runtime_module()
    plan = {"days": [{"city": "1"}]}
    assert rt.extract_answer(json.dumps(plan)) == plan
    text = ('draft {"days": []} then <tool_call>{"name": "x", "arguments": {}}</tool_call> '
            '<tool_response>{"results": []}</tool_response> final: ' + json.dumps(plan) + ' {"results": [1]}')
    assert rt.extract_answer(text) == plan
    assert rt.extract_answer("<think>" + json.dumps(plan) + "</think> no json here") is None
    assert rt.extract_answer("reasoning without opening tag {\"days\": 1}</think>" + json.dumps(plan)) == plan
    assert rt.extract_answer("{not json} {\"a\": 1") is None
    assert rt.extract_answer(None) is None and rt.extract_answer(plan) is plan


def test_runtime_caps_tool_output_at_the_declared_length(bundle):
    rt_mod = _runtime_module()
    env = env_dirs(bundle)[0]
    full = rt_mod.Runtime(env).episode(None, env_id=env.name).call("list_cities", {})
    assert 200 < len(full) <= 4000 and json.loads(full)["results"]
    small = rt_mod.Runtime(env, max_tool_response_chars=200)
    ep = small.episode(None, env_id=env.name)
    out = ep.call("list_cities", {})
    assert len(out) <= 200 and "too large" in json.loads(out)["error"]
    task = next(iter(small.envs[env.name].tasks.values()))
    ep = small.episode("k", task_id=task["task_id"])
    assert set(ep.tool_names) == set(task["tools"])
    extra = sorted(set(small.envs[env.name].schemas) - set(task["tools"]))
    assert extra, "level 0 should not have every tool of the environment"
    assert "unknown tool" in json.loads(ep.call(extra[0], {}))["error"]


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("args, needle", [
    (["export", "/nonexistent/x", "--to", "verl"], "is not a directory"),
    (["export", "{tmp}", "--to", "verl"], "neither an environment directory"),
    (["export", "{bundle}", "--to", "trl", "--test-fraction", "1.5"], "--test-fraction"),
    (["export", "{bundle}", "--to", "trl", "--out", "{env0}/tools"], "bundle's own files"),
    (["export", "{bundle}", "--to", "gym"], "unknown export target 'gym'"),
    (["serve", "{bundle}"], "pick one with --env"),
    (["serve", "{env0}", "--transport", "sse"], "--transport must be stdio or http"),
    (["serve", "{env0}", "--port", "8000"], "--port applies to --transport http"),
    (["serve", "{env0}", "--transport", "http", "--port", "0"], "--port must be"),
])
def test_cli_errors_are_one_line_exit_2(bundle, tmp_path, args, needle):
    subs = {"{tmp}": str(tmp_path), "{bundle}": str(bundle), "{env0}": str(env_dirs(bundle)[0])}
    args = [subs.get(a, a) if not a.startswith("{env0}/") else a.replace("{env0}", subs["{env0}"]) for a in args]
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factory: error:") and needle in lines[0], r.stderr


def test_cli_rejects_a_tampered_bundle(bundle, tmp_path):
    import shutil

    env = tmp_path / "env"
    shutil.copytree(env_dirs(bundle)[0], env)
    with open(env / "tasks" / "tasks.jsonl", "a") as f:
        f.write("\n")
    r = _cli("export", str(env), "--to", "verl")
    assert r.returncode == 2 and "do not match manifest.json" in r.stderr and "Traceback" not in r.stderr


def test_cli_export_prints_summary(bundle, tmp_path):
    r = _cli("export", str(bundle), "--to", "jsonl", "--out", str(tmp_path / "j"))
    assert r.returncode == 0, r.stderr
    n = sum(len(tasks_of(e)) for e in env_dirs(bundle))
    assert r.stdout.strip() == f"jsonl: {n} tasks (train: 2 env(s), test: 1 env(s)) -> {tmp_path / 'j'}"


def test_same_bundle_same_export_bytes(bundle, exports, tmp_path):
    again = export(bundle, "verl", tmp_path / "verl").out
    first = json.loads((exports["verl"] / "manifest.json").read_text())
    second = json.loads((again / "manifest.json").read_text())
    assert first["files"] == second["files"] and len(first["files"]) > 20


def test_out_dir_that_is_not_an_export_is_refused(bundle, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an envfactory export"):
        export(bundle, "jsonl", tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine" and not list(tmp_path.glob(".*"))


def test_every_tool_output_stays_under_the_declared_limit(exports):
    """Every tool on every id the sandbox holds, through the runtime the exports ship."""
    import duckdb

    out = exports["jsonl"]
    limit = json.loads((out / "export.json").read_text())["max_tool_response_chars"]
    rt_mod = _runtime_module()
    rt = rt_mod.Runtime(out)
    assert rt.max_tool_response_chars == limit
    longest = 0
    for env in rt.envs.values():
        ep = rt.episode(None, env_id=env.env_id)
        con = duckdb.connect(env.db_path, read_only=True)
        try:
            ids = {"city_id": [r[0] for r in con.execute("SELECT city_id FROM cities").fetchall()]}
            for table, key in (("hotels", "hotel_id"), ("restaurants", "restaurant_id"),
                               ("attractions", "attraction_id")):
                ids[key] = [r[0] for r in con.execute(f"SELECT {key} FROM {table}").fetchall()]
        finally:
            con.close()
        ids["from_id"] = ids["to_id"] = ids["city_id"][:6]
        for name, schema in env.schemas.items():
            params = list(schema["function"]["parameters"]["properties"])
            combos = [{}] if not params else [{p: v for p in params} for v in ids[params[0]]] if len(params) == 1 \
                else [{"from_id": a, "to_id": b} for a in ids["from_id"] for b in ids["to_id"]]
            for args in combos:
                text = ep.call(name, args)
                json.loads(text)
                longest = max(longest, len(text))
                assert len(text) <= limit, (name, args, len(text))
    assert 300 < longest <= limit


def test_every_export_requires_the_duckdb_that_wrote_its_databases(exports):
    """DuckDB opens older storage formats, not newer ones (1.1.3, 1.4.4 and 1.5.6 refuse a file
    written by 2.0.1), so each export's requirements name the writer's release as the floor."""
    import duckdb

    floor = "duckdb>={}.{}".format(*duckdb.__version__.split(".")[:2])
    reqs = {"verl": "requirements.txt", "trl": "requirements.txt", "mcp": "requirements.txt",
            "openenv": "server/requirements.txt", "jsonl": "requirements.txt", "verifiers": "pyproject.toml"}
    assert set(reqs) == set(TARGETS)
    for target, rel in reqs.items():
        text = "\n".join(l for l in (exports[target] / rel).read_text().splitlines() if not l.lstrip().startswith("#"))
        named = [w.strip('",[]') for w in text.replace("\n", " ").split() if w.strip('",[]').startswith("duckdb")]
        assert named == [floor], (target, named)
