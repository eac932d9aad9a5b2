"""Resumable runs: a generation killed with SIGKILL midway resumes from its journal and ends
with the same bytes as a run that was never interrupted; --envs grows a finished run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["generate", "trip_planning", "--seed", "11", "--workers", "2"]
PARTS = ("tasks", "verifiers", "tools")


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _files(run: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under each environment's tasks/, verifiers/, tools/."""
    out = {}
    for env in sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for part in PARTS:
            for f in sorted((env / part).rglob("*")):
                if f.is_file():
                    out[str(f.relative_to(run))] = f.read_bytes()
    return out


def _ok_lines(run: Path) -> int:
    try:
        text = (run / "journal.jsonl").read_text()
    except FileNotFoundError:
        return 0
    return text.count('"status": "ok"')


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run = tmp_path_factory.mktemp("whole") / "run"
    r = _cli(*ARGS, "--envs", "4", "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    return run


def test_sigkill_midway_then_resume_gives_the_same_bytes(whole, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "envfactory.factory.cli", *ARGS, "--envs", "4", "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _ok_lines(run) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)  # orphaned workers notice the parent is gone and exit (0.5 s poll)
    n_before = _ok_lines(run)
    assert 1 <= n_before < 4 and not (run / "batch.json").exists()
    r = _cli(*ARGS, "--envs", "4", "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    want, got = _files(whole), _files(run)
    assert sorted(got) == sorted(want) and len(want) > 4 * len(PARTS)
    assert all(got[k] == want[k] for k in want)
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []
    a = json.loads((whole / "batch.json").read_text())
    b = json.loads((run / "batch.json").read_text())
    assert [e["env_id"] for e in b["envs"]] == [e["env_id"] for e in a["envs"]]
    assert [e["counts"] for e in b["envs"]] == [e["counts"] for e in a["envs"]]
    # the resumed run built only what the killed one had not finished
    assert _ok_lines(run) - n_before <= 4 - n_before + 2


def test_resume_grows_a_finished_run_without_rebuilding(whole, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(whole, run)
    stamps = {p.name: (p / "manifest.json").stat().st_mtime_ns for p in run.iterdir() if p.is_dir()}
    r = _cli(*ARGS, "--envs", "5", "--out", str(run), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    b = json.loads((run / "batch.json").read_text())
    ids = [e["env_id"] for e in b["envs"]]
    assert len(ids) == 5 and set(stamps) <= set(ids)
    assert all((run / n / "manifest.json").stat().st_mtime_ns == t for n, t in stamps.items())


def test_a_run_directory_is_not_reused_by_mistake(whole, tmp_path):
    # another run seed cannot resume this run
    r = _cli("generate", "trip_planning", "--seed", "12", "--envs", "4", "--out", str(whole), "--resume")
    assert r.returncode == 2 and "journal is of another run (run_seed" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a plain second run into the same directory is refused, not merged
    r = _cli(*ARGS, "--envs", "4", "--out", str(whole))
    assert r.returncode == 2 and "--resume continues it" in r.stderr
    # nothing to resume
    r = _cli(*ARGS, "--envs", "1", "--out", str(tmp_path / "new"), "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr
