"""Trusted in-process import of a generated module (the factory's own output at build
time). Writes no bytecode beside the file, so a bundle's manifest stays exact. Untrusted
code goes through `sandboxes.isolate` instead."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def import_file(path: str | Path, prefix: str):
    path = Path(path)
    name = f"{prefix}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.dont_write_bytecode = before
        sys.modules.pop(name, None)
    return mod
