"""`factory seed draft`: a model drafts a seed from a description and the data catalog, and
the seed checker gates it: a refused draft goes back with the checker's line, and only a
seed that loads is written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from envfactory.factory.seed import builtin_seeds, load_seed
from tests.factory.scripted_server import ScriptedServer, completion

FILM = builtin_seeds()["film_programme"].read_text()
DRAFT = FILM.replace('name = "film_programme"', 'name = "festival_picks"')
BROKEN = DRAFT.replace('"aggregate:film.metacritic",', '"aggregate:film.budget",')


def _factory(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_a_draft_refused_by_the_checker_is_sent_back_then_written(tmp_path):
    (tmp_path / "mine.csv").write_text("item_id,name,price\ni1,lamp,30\ni2,desk,120\n")
    with ScriptedServer([completion(json.dumps({"toml": BROKEN})), completion(json.dumps({"toml": DRAFT}))]) as srv:
        out = tmp_path / "festival.toml"
        r = _factory("seed", "draft", "a short festival of real films from one decade", "-o", str(out),
                     "--base-url", srv.base_url, "--data", str(tmp_path / "mine.csv"))
        bodies = srv.bodies()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out) and "after 2 replies (1 refused by the checker)" in r.stderr
    seed = load_seed(out)
    assert seed.name == "festival_picks" and seed.plan.shape == "selection"
    first = bodies[0]["messages"][-1]["content"]
    assert "a short festival of real films" in first
    assert 'path = "_data/routes.csv.gz"' in first and "synthetic = true" not in first  # the real catalog
    assert "item_id VARCHAR, name VARCHAR, price BIGINT" in first and 'path = "mine.csv"' in first
    fed = bodies[1]["messages"][-1]["content"]
    line = next(i for i, x in enumerate(BROKEN.splitlines(), 1) if x.startswith("pool = ["))  # the field's line
    assert re.search(rf"the seed checker refused it: festival\.toml:{line}: ladder\.pool: .*budget", fed), fed
    assert bodies[0]["response_format"]["type"] == "json_schema"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no draft left behind


def test_a_model_that_never_drafts_a_valid_seed_writes_nothing(tmp_path):
    with ScriptedServer(lambda body, n: completion(json.dumps({"toml": "[seed]\nname = 3\n" * 4}))) as srv:
        out = tmp_path / "x.toml"
        r = _factory("seed", "draft", "anything", "-o", str(out), "--base-url", srv.base_url, "--attempts", "2")
    assert r.returncode == 2 and not out.exists() and "Traceback" not in r.stderr
    assert "drafted no seed that passes the checker in 2 replies" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_seed_draft_needs_a_server_and_a_free_path(tmp_path):
    r = _factory("seed", "draft", "x", "-o", str(tmp_path / "a.toml"))
    assert r.returncode == 2 and "needs --base-url" in r.stderr
    (tmp_path / "b.toml").write_text("")
    r = _factory("seed", "draft", "x", "-o", str(tmp_path / "b.toml"), "--base-url", "http://127.0.0.1:9/v1")
    assert r.returncode == 2 and "exists" in r.stderr
