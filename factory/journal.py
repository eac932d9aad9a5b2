"""The run journal: what a generation run has finished, so a killed run can resume.

`OUT/journal.jsonl` starts with one `run` line (seed name and file digest, run seed, agent
kind and model) and gets one line per environment outcome, written and fsynced the moment the
environment is in place: `{"event": "env", "i": 3, "status": "ok", "summary": {...}}` or
`"status": "skip"` with the reason it was replaced. A line is only ever appended, so a kill
at any point leaves whole lines plus at most one torn last line, which reading drops.

An environment counts as finished on resume only if its line says ok and its directory holds
a manifest (the directory is moved into place whole, `bundle.finalize`, before the line is
written). Anything else of this run in OUT (half-built temporary directories, a directory
moved into place whose line was never written) is removed and built again; environments are
pure functions of (seed, region, run seed), so the resumed run writes the same bytes.

A lock (`OUT/.lock`, flock) keeps two runs from writing the same directory at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from envfactory.factory.errors import UsageError

JOURNAL = "journal.jsonl"
FORMAT = 1


class JournalError(UsageError):
    """The run directory cannot be resumed or started (mismatched run, held lock)."""


def run_header(seed_name: str, seed_sha256: str, run_seed: int, agent_kind: str, agent_model) -> dict:
    return {"event": "run", "format": FORMAT, "seed": seed_name, "seed_sha256": seed_sha256,
            "run_seed": run_seed, "agent": {"kind": agent_kind, "model": agent_model}}


def read(out: Path) -> tuple[dict | None, list[dict]]:
    """(the run line, the env lines) of OUT's journal; (None, []) when there is none. A torn
    last line (a kill mid-write) is dropped; a bad line elsewhere is an error."""
    path = out / JOURNAL
    if not path.exists():
        return None, []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for n, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw))
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # the last, unterminated line: torn by a kill
                break
            raise JournalError(f"{path}:{n + 1}: not a journal line") from None
    if not rows or rows[0].get("event") != "run":
        raise JournalError(f"{path}: does not start with a run line")
    return rows[0], [r for r in rows[1:] if r.get("event") == "env"]


class Journal:
    """Appends lines to OUT's journal, each flushed and fsynced; holds OUT's lock."""

    def __init__(self, out: Path, header: dict, resume: bool):
        self.out = out
        self._lock = open(out / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise JournalError(f"{out}: another run is writing this directory") from None
        path = out / JOURNAL
        if resume and path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # cut a torn last line before appending
                data = data[:data.rfind(b"\n") + 1]
                with open(path, "r+b") as f:
                    f.truncate(len(data))
            self._f = open(path, "ab")
        else:
            self._f = open(path, "wb")
            self.write(header)

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, sort_keys=True).encode() + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
        self._lock.close()  # (closing the file releases the flock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def preflight(out: Path, header: dict, resume: bool, force: bool, agent: bool = True) -> list[dict]:
    """The env lines to resume from (none for a new run), or one clear error: resuming a
    directory without a journal or with another run's, or starting a run over a journaled
    one without --force. `agent=False` leaves the agent out of the comparison (the CLI's
    early check, before a local model server has named its model)."""
    head, rows = read(out)
    if resume:
        check_resumable(out, header, head, agent)
        return rows
    if head is not None and not force:
        raise JournalError(f"{out} holds a run already ({JOURNAL}): --resume continues it, --force starts it over")
    return []


def check_resumable(out: Path, header: dict, journal_head: dict | None, agent: bool = True) -> None:
    """Raise unless OUT's journal is of the same run (seed file, run seed and agent)."""
    if journal_head is None:
        raise JournalError(f"{out}: nothing to resume (no {JOURNAL}); run without --resume")
    for key in ("seed", "seed_sha256", "run_seed") + (("agent",) if agent else ()):
        if journal_head.get(key) != header[key]:
            raise JournalError(f"{out}: the journal is of another run ({key}: {journal_head.get(key)!r}, "
                               f"this run: {header[key]!r}); use a new --out or --force to start over")


def finished(out: Path, rows: list[dict]) -> tuple[dict[int, dict], dict[int, str]]:
    """({index: summary} of environments in place, {index: reason} of replaced ones) from
    the journal's env lines; a later line for an index wins (a dropped one is rebuilt)."""
    ok: dict[int, dict] = {}
    skip: dict[int, str] = {}
    for r in rows:
        i = int(r["i"])
        ok.pop(i, None)
        skip.pop(i, None)
        if r["status"] == "ok" and (out / r["summary"]["path"] / "manifest.json").exists():
            ok[i] = r["summary"]
        elif r["status"] == "skip":
            skip[i] = r["reason"]
    return ok, skip


def sweep(out: Path, prefix: str, keep: set[str]) -> list[str]:
    """Remove what a killed run of this prefix left in OUT besides the finished environments
    `keep`: temporary build directories and environment directories without an ok line."""
    removed = []
    for p in sorted(out.iterdir()):
        name = p.name
        stale_tmp = name.startswith(f".{prefix}") and (".tmp" in name or ".old" in name)
        unjournaled = name.startswith(prefix) and p.is_dir() and name not in keep
        if stale_tmp or unjournaled:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(name)
    return removed
