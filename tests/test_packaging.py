"""The installed layout (issue 12): every part of the repository installs under `envfactory`,
so none lands on a top-level name another distribution owns, and nothing in the code imports
a part by its bare folder name (which would find PrimeIntellect's `verifiers` or Hugging
Face's `kernels` once installed beside them)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import envfactory

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_of_the_tree_is_listed_under_envfactory():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {"envfactory"} | {
        "envfactory." + ".".join(p.parent.relative_to(ROOT).parts)
        for part in envfactory.PARTS for p in (ROOT / part).rglob("__init__.py")}
    assert listed == on_disk
    dirs = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert dirs == {"envfactory": "envfactory", **{f"envfactory.{p}": p for p in envfactory.PARTS}}


def test_package_data_globs_match_files():
    dirs = PYPROJECT["tool"]["setuptools"]["package-dir"]
    for pkg, globs in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        head, _, rest = pkg.partition(".")
        top = ".".join(pkg.split(".")[:2])
        base = ROOT / dirs[top] / Path(*pkg.split(".")[2:])
        for g in globs:
            assert list(base.glob(g)), f"{pkg}: {g} matches nothing under {base}"


def test_no_bare_imports_of_the_parts():
    """`from verifiers.x import` inside our code would import the other library once installed."""
    parts = "|".join(envfactory.PARTS)
    bare = re.compile(rf"^\s*(from ({parts})(\.| import)|import ({parts})(\.|\s|$))|import_module\([\"']({parts})\b",
                      re.M)
    files = subprocess.run(["git", "ls-files", "*.py", "*.j2"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = []
    for rel in files:
        text = (ROOT / rel).read_text(encoding="utf-8")
        for m in bare.finditer(text):
            line = text[:m.start()].count("\n") + 1
            offenders.append(f"{rel}:{line}: {m.group(0).strip()}")
    # the verifiers export's generated package and the tests that run it import the real library on purpose
    library = r"(factory/export/(verifiers_env\.py|templates/verifiers)|tests/trainers/(drivers/verifiers_|test_install\.py))"
    offenders = [o for o in offenders if not re.match(library, o)]
    assert not offenders, "\n".join(offenders)
