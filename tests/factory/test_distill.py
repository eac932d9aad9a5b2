"""Distillation records: the specialist's decisions as a model agent is asked for them, with
the ladder's verdicts, matching the bundle the same run wrote."""

import json
import subprocess
import sys

import jsonschema

from envfactory.factory.agents.distill import read_records


def test_records_match_the_ladder_and_the_schema(tmp_path):
    out, rec = tmp_path / "out", tmp_path / "rec"
    r = subprocess.run([sys.executable, "-m", "envfactory.factory.cli", "generate", "car_fleet", "--envs", "2",
                        "--out", str(out), "--workers", "1", "--agent-option", f"record={rec}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    files = sorted(rec.glob("*.jsonl"))
    assert len(files) == 2
    for f in files:
        recs = read_records([f], accepted_only=False)
        tasks = [json.loads(x) for x in (out / f.stem / "tasks" / "tasks.jsonl").read_text().splitlines()]
        assert [x["decision"] for x in recs[:2]] == ["data", "base"]
        assert recs[1]["answer"]["constraints"] == [{"kind": c["kind"], "params": c["params"]}
                                                    for c in tasks[0]["constraints"]]
        moves = [x for x in recs if x["decision"] == "move"]
        took = [x for x in moves if x["accepted"]]
        # one accepted move per level above 0, and it is the change between the levels' constraints
        assert [x["level"] for x in took] == list(range(1, len(tasks)))
        for x in took:
            item = x["answer"]["moves"][0]
            now = {c["name"]: c for c in tasks[x["level"]]["constraints"]}
            before = {c["name"]: c for c in tasks[x["level"] - 1]["constraints"]}
            changed = [c for n, c in now.items() if before.get(n) != c]
            assert [{"kind": c["kind"], "params": c["params"]} for c in changed] == \
                   [{"kind": item["kind"], "params": item["params"]}]
            assert ("replaces" in item) == (changed[0]["name"] in before)
        # the prompt a model would get: the system line, the level it builds on, earlier verdicts
        for x in recs:
            jsonschema.validate(x["answer"], x["schema"])
            assert x["messages"][0]["role"] == "system" and x["messages"][1]["role"] == "user"
        later = [x for x in moves if x["level"] == 2][1:]
        assert later and all("The ladder's verdicts on your earlier proposals" in x["messages"][1]["content"]
                             for x in later)
        assert sum(not x["accepted"] for x in moves) > 0 and all(x["reason"] for x in moves)
