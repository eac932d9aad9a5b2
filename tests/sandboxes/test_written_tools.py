"""Model-written tools run in the Docker sandbox on real arguments before they are accepted:
a good one passes; one that calls the network, writes, loops forever or answers too much is
rejected with the reason."""

from __future__ import annotations

import http.server
import threading

import duckdb
import pytest

from envfactory.toolgen.written import WrittenTool, check_written_tool, static_problem
from tests.sandboxes.test_isolate import _Counter, _require_docker

CALLS = [{"hotel_id": "H1"}, {"hotel_id": "H2"}]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    _require_docker()
    path = tmp_path_factory.mktemp("written") / "sandbox.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE hotels (hotel_id VARCHAR PRIMARY KEY, city_id VARCHAR, rating DOUBLE, stars INTEGER)")
    con.executemany("INSERT INTO hotels VALUES (?, ?, ?, ?)",
                    [("H1", "C1", 4.5, 4), ("H2", "C1", 3.9, 3), ("H3", "C2", 4.1, 5)])
    con.close()
    return path


def _tool(body: str, params=("hotel_id",)) -> WrittenTool:
    args = ", ".join(f"{p}: str" for p in params)
    code = f"def get_hotel_rating({args}) -> str:\n" + "\n".join("    " + line for line in body.splitlines())
    return WrittenTool("get_hotel_rating", "hotels", tuple(params), code)


def test_a_good_tool_is_accepted_with_its_outputs(db):
    t = _tool('return respond(query("SELECT hotel_id, rating FROM hotels WHERE hotel_id = ?", [hotel_id]))')
    v = check_written_tool(t, db, CALLS, ["hotel_id", "rating"], backend="docker")
    assert v.ok, v.reason
    assert v.outputs == [{"results": [{"hotel_id": "H1", "rating": 4.5}]},
                         {"results": [{"hotel_id": "H2", "rating": 3.9}]}]
    assert "docker sandbox" in v.reason


def test_a_network_call_is_rejected(db):
    _Counter.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)  # the host's loopback
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    t = _tool(f"import urllib.request\n"
              f"return urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1).read().decode()")
    try:
        # a loose call limit: a loaded machine can take seconds to start the call, and this test
        # is about the refused connection, not the clock
        v = check_written_tool(t, db, CALLS, ["hotel_id", "rating"], backend="docker", timeout_s=20.0)
    finally:
        server.shutdown()
        server.server_close()
    assert not v.ok and "failed in the sandbox" in v.reason and "URLError" in v.reason, v.reason
    assert _Counter.hits == 0  # the container has no route to the host


def test_a_write_is_rejected(db):
    t = _tool("from pathlib import Path\n"
              "Path(_db_path()).with_name('stolen.txt').write_text('x')\n"
              "return respond([])")
    v = check_written_tool(t, db, CALLS, ["hotel_id"], backend="docker")
    assert not v.ok and "Read-only file system" in v.reason, v.reason
    t = _tool('import duckdb\nduckdb.connect(_db_path()).execute("DELETE FROM hotels")\nreturn respond([])')
    v = check_written_tool(t, db, CALLS, ["hotel_id"], backend="docker")
    assert not v.ok and "failed in the sandbox" in v.reason, v.reason
    assert duckdb.connect(str(db), read_only=True).execute("SELECT count(*) FROM hotels").fetchone()[0] == 3


def test_an_infinite_loop_is_rejected(db):
    v = check_written_tool(_tool("while True:\n    pass"), db, CALLS, ["hotel_id"], backend="docker", timeout_s=1.0)
    assert not v.ok and "timeout" in v.reason, v.reason


def test_a_huge_output_is_rejected(db):
    t = _tool('return respond([{"hotel_id": hotel_id, "note": "x" * 100}] * 100000)')
    v = check_written_tool(t, db, CALLS, ["hotel_id"], backend="docker")
    assert not v.ok and "result too large" in v.reason, v.reason


def test_a_tool_that_answers_no_rows_or_not_json_is_rejected(db):
    v = check_written_tool(_tool("return respond([])"), db, CALLS, ["hotel_id"], backend="docker")
    assert not v.ok and "no call returned rows with hotel_id" in v.reason
    v = check_written_tool(_tool("return 'hello'"), db, CALLS, ["hotel_id"], backend="docker")
    assert not v.ok and "failed in the sandbox" in v.reason and "JSONDecodeError" in v.reason, v.reason


@pytest.mark.parametrize("code,reason", [
    ("import os\ndef get_hotel_rating(hotel_id: str) -> str:\n    return ''", "exactly one top-level function"),
    ("def get_rating(hotel_id: str) -> str:\n    return ''", "named 'get_rating'"),
    ("def get_hotel_rating(city_id: str) -> str:\n    return ''", "expected (hotel_id)"),
    ("def get_hotel_rating(hotel_id: str = __import__('os').system('x')) -> str:\n    return ''", "no defaults"),
    ("@print\ndef get_hotel_rating(hotel_id: str) -> str:\n    return ''", "no decorators"),
    ("def get_hotel_rating(hotel_id: str) -> str\n    return ''", "not valid Python"),
    ("def get_hotel_rating(hotel_id: __import__('os').getcwd()) -> str:\n    return ''", "annotate with one of"),
    ("def get_hotel_rating(hotel_id: str) -> print('x'):\n    return ''", "annotate it `-> str`"),
])
def test_code_that_cannot_be_loaded_safely_is_refused_before_running(code, reason):
    why = static_problem(WrittenTool("get_hotel_rating", "hotels", ("hotel_id",), code))
    assert why and reason in why, why
