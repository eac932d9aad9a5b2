"""Exports of task bundles for RL trainers (issue 4): bundle in, self-contained directory out.

`export(path, target, out=None)` reads a bundle (a directory of environments) or one
environment directory and writes `out` (default `PATH/exports/<target>`): the target's own
files, the environments' databases, tools and verifiers, the runtime that serves them
(`envfactory_runtime.py`, standard library plus duckdb), a dataset card (`README.md`) and a
`manifest.json` with the sha256 of every file. Splits are by environment.

Targets register themselves (`register`); one module each: verl, trl, verifiers, mcp,
openenv, jsonl (NeMo Gym, slime, OpenRLHF rows). `docs/export.md` describes each output.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envfactory.factory.errors import UsageError

__all__ = ["TARGETS", "ExportResult", "Exporter", "export", "register", "targets"]


@dataclass(frozen=True)
class Exporter:
    name: str
    description: str
    write: Callable  # write(src, dest, splits) -> dict of manifest info


@dataclass(frozen=True)
class ExportResult:
    target: str
    out: Path
    splits: dict
    tasks: int
    recorded_in: Path | None


_REGISTRY: dict[str, Exporter] = {}
# target name -> the module that registers it (the one list of targets; the CLI and the tests read it)
TARGETS = {"verl": "verl", "trl": "trl", "verifiers": "verifiers_env", "mcp": "mcp_server", "openenv": "openenv",
           "jsonl": "jsonl"}


def register(name: str, write: Callable, description: str) -> None:
    _REGISTRY[name] = Exporter(name, description, write)


def targets() -> dict[str, Exporter]:
    for m in TARGETS.values():
        importlib.import_module(f"envfactory.factory.export.{m}")
    return dict(_REGISTRY)


def export(path: str | Path, target: str, out: str | Path | None = None, test_fraction: float = 0.2) -> ExportResult:
    from envfactory.factory.export.common import load_source, new_tmp, place, split_envs

    known = targets()
    if target not in known:
        raise UsageError(f"unknown export target {target!r} (targets: {', '.join(known)})")
    src = load_source(path)
    dest = Path(out).resolve() if out else src.path / "exports" / target
    if dest == src.path or src.path in dest.parents and dest.relative_to(src.path).parts[0] != "exports":
        raise UsageError(f"--out {dest} would write into the bundle's own files; use a path under "
                         f"{src.path / 'exports'} or outside it")
    splits = split_envs([e.env_id for e in src.envs], test_fraction)
    tmp = new_tmp(dest)
    try:
        info = known[target].write(src, tmp, splits)
        info = dict(info, splits=splits, sources={e.env_id: {"manifest_sha256": e.manifest_sha256}
                                                  for e in src.envs})
        recorded = place(tmp, dest, target, info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(target, dest, splits, len(src.tasks), recorded)
