"""One generated bundle (3 trip-planning environments, run seed 7) and one export of it per
target, shared by the export and trainer tests; helpers for answers, mutants and free loopback ports."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

import pytest

from envfactory.factory.export import export, targets
from envfactory.factory.generate import generate

N_ENVS = 3
TARGETS = tuple(targets())


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    generate("trip_planning", N_ENVS, out, 7, workers=2)
    return out


@pytest.fixture(scope="session")
def exports(bundle, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {t: export(bundle, t, root / t).out for t in TARGETS}


def env_dirs(bundle: Path) -> list[Path]:
    return sorted(p for p in bundle.iterdir() if (p / "tasks" / "tasks.jsonl").is_file())


def tasks_of(env: Path) -> list[dict]:
    return [json.loads(l) for l in (env / "tasks" / "tasks.jsonl").read_text().splitlines() if l]


def all_tasks(bundle: Path) -> list[dict]:
    return [t for e in env_dirs(bundle) for t in tasks_of(e)]


def mutant(answer: dict) -> dict:
    """The reference with the hotels of day 1 and day 2 swapped: each hotel is then in the
    wrong city, which every task's `linked` check rejects."""
    bad = copy.deepcopy(answer)
    days = bad["days"]
    days[0]["hotel"], days[1]["hotel"] = days[1]["hotel"], days[0]["hotel"]
    assert bad != answer
    return bad


def as_response(answer: dict) -> str:
    """A realistic final response: reasoning, a tool call echo, a tool result, then prose and
    the plan in a fenced block."""
    return ("<think>Let me check the cities first. {\"days\": []}</think>\n"
            "<tool_call>{\"name\": \"list_cities\", \"arguments\": {}}</tool_call>\n"
            "<tool_response>{\"results\": [{\"city_id\": \"1\"}]}</tool_response>\n"
            "Here is the plan:\n```json\n" + json.dumps(answer, indent=1) + "\n```\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_schemas(out: Path) -> dict[str, dict]:
    """Tool name -> its OpenAI function schema, over the environments of an export."""
    found = {}
    for p in (out / "envs").glob("*/tools/tool_schemas.json"):
        for s in json.loads(p.read_text()):
            found[s["function"]["name"]] = s["function"]
    return found
