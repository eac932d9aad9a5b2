"""docs/seeds.md walks a new user through a seed for their own CSV file. Build exactly the
page's example files, run the two commands it gives, and check what it promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "seeds.md"


def _examples() -> dict[str, str]:
    """Every fenced block that follows an `<!-- example: NAME -->` marker, by NAME."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"<!-- example: (\S+) -->\n```[a-z]*\n(.*?)```", text, flags=re.S)
    return {name: body for name, body in found}


def _factory(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_csv_walkthrough_builds_and_validates(tmp_path):
    files = _examples()
    assert set(files) == {"courses.csv", "courses.toml"}
    seed_dir = tmp_path / "my"
    seed_dir.mkdir()
    for name, body in files.items():
        (seed_dir / name).write_text(body, encoding="utf-8")
    out = tmp_path / "out" / "semester"
    r = _factory("generate", str(seed_dir / "courses.toml"), "--envs", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    batch = json.loads((out / "batch.json").read_text())
    assert len(batch["envs"]) == 3
    departments = set()
    for e in batch["envs"]:
        counts = [int(c) for c in e["counts"]]
        assert e["levels"] >= 6 and all(a > b >= 1 for a, b in zip(counts, counts[1:])), e
        env = out / e["path"]
        tasks = [json.loads(line) for line in (env / "tasks" / "tasks.jsonl").read_text().splitlines()]
        # a selection of 4 distinct courses of one department, as the page says
        ref = tasks[-1]["reference_answer"]["courses"]
        assert len(ref) == 4 and len({u["course"] for u in ref}) == 4
        departments.add(env.name.split("-", 3)[3])
        assert "real data from `seed:courses.csv`" in (env / "README.md").read_text()
    assert len(departments) == 3  # one department per environment
    r = _factory("validate", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "validation.json").read_text())
    assert report["totals"]["soundness"] == 1.0 and report["totals"]["completeness"] == 1.0
    assert report["totals"]["failures"] == 0
