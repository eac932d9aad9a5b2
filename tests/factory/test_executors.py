"""`factory generate|validate|solve --executor ray`: environments as Ray tasks on a local Ray
instance give the same tasks, verifiers and tools, byte for byte, the same validation report
and the same solve results as the local process pool."""

import json
import subprocess
import sys

import pytest

from tests.factory.test_resume import _files

ARGS = ["generate", "trip_planning", "--seed", "5", "--envs", "3", "--workers", "2"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_ray_tasks_write_the_same_bytes_as_the_local_pool(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (scripts/setup.sh installs it)")
    local, ray = tmp_path / "local", tmp_path / "ray"
    r = _cli(*ARGS, "--out", str(local))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli(*ARGS, "--out", str(ray), "--executor", "ray")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _files(local), _files(ray)
    assert len(a) >= 3 * 3 and sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    batch = lambda d: json.loads((d / "batch.json").read_text())  # noqa: E731
    assert batch(local)["executor"] == "local" and batch(ray)["executor"] == "ray"
    untimed = lambda d: [{k: v for k, v in e.items() if k != "timings"} for e in batch(d)["envs"]]  # noqa: E731
    assert untimed(local) == untimed(ray)
    assert set(batch(ray)["phase_seconds"]) >= {"data", "ladder", "tools", "verifiers", "write"}

    # validate and solve the same bundle on both executors
    untimed_report = {}
    for ex in ("local", "ray"):
        report = tmp_path / f"validation-{ex}.json"
        r = _cli("validate", str(local), "--backend", "local", "--workers", "2", "--quiet", "--executor", ex,
                 "--report", str(report))
        assert r.returncode == 0, r.stderr[-2000:]
        rep = json.loads(report.read_text())
        untimed_report[ex] = {k: v for k, v in rep.items() if k not in ("seconds", "verifier_calls_per_s")}
        r = _cli("solve", str(local), "--agent", "greedy", "--quiet", "--executor", ex)
        assert r.returncode == 0, r.stderr[-2000:]
        untimed_report[ex]["solve"] = {k: v for k, v in json.loads((local / "solve-greedy.json").read_text()).items()
                                       if k != "seconds"}
    assert untimed_report["local"]["ok"] and untimed_report["local"]["verifier_calls"] > 100
    assert untimed_report["local"] == untimed_report["ray"]


def test_address_without_ray_is_one_clear_error(tmp_path):
    r = _cli(*ARGS, "--out", str(tmp_path / "x"), "--address", "auto")
    assert r.returncode == 2 and r.stderr.strip() == "factory: error: --address is for --executor ray"
