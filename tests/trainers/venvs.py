"""The trainer libraries' own virtual environments, for the tests that run exports inside them.

Each library is installed from PyPI, pinned, in a venv of its own (their pins collide:
verl wants transformers < 5.11, OpenRLHF == 5.15, verifiers 0.4 its own mcp). A venv lives
under `ENVFACTORY_TRAINER_VENVS` (default `~/.cache/envfactory/trainer-venvs`) in a folder
named after the hash of its requirements, so a changed pin builds a new one and an unchanged
one is reused across runs and clones. A venv counts as built only once its `.complete` stamp
is written, after the install and an import check; a half-built one is removed and rebuilt.

    python -m tests.trainers.venvs            # build every missing venv (2 at a time), print one line each
    python -m tests.trainers.venvs --list     # name, state, path

torch is pinned to 2.13.0, the CPU build on this machine's disk: a bare `torch` requirement
would pull a multi-GB CUDA build.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPECS", "VenvSpec", "cache_root", "ensure", "python_of"]

TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class VenvSpec:
    name: str
    requirements: tuple[str, ...]
    check: str  # a Python statement that must run in the finished venv
    pip_args: tuple[str, ...] = ()  # e.g. --no-deps for a library whose full pins cannot install on CPU
    python: str = sys.executable

    @property
    def key(self) -> str:
        text = "\n".join([self.name, *self.requirements, *self.pip_args, self.check])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


SPECS: dict[str, VenvSpec] = {s.name: s for s in (
    VenvSpec("verl", (TORCH, "verl==0.9.1", "duckdb>=1.1"), "import verl, ray, transformers, duckdb"),
    VenvSpec("trl", (TORCH, "trl==1.16.0", "duckdb>=1.1"), "import trl, transformers, duckdb"),
    VenvSpec("verifiers-0.4", ("verifiers==0.4.0", "datasets>=2.19", "duckdb>=1.1"), "import verifiers, duckdb"),
    VenvSpec("verifiers-0.3", ("verifiers==0.3.1", "datasets>=2.19", "duckdb>=1.1"), "import verifiers, duckdb"),
    VenvSpec("openenv-core", ("openenv-core==0.3.0", "duckdb>=1.1"), "import openenv, duckdb"),
    VenvSpec("openenv", ("openenv==0.10.0", "duckdb>=1.1"), "import openenv, duckdb"),
)}


def cache_root() -> Path:
    return Path(os.environ.get("ENVFACTORY_TRAINER_VENVS") or Path.home() / ".cache" / "envfactory" / "trainer-venvs")


def venv_dir(spec: VenvSpec) -> Path:
    return cache_root() / f"{spec.name}-{spec.key}"


def python_of(name: str) -> Path:
    return venv_dir(SPECS[name]) / "bin" / "python"


def is_built(spec: VenvSpec) -> bool:
    return (venv_dir(spec) / ".complete").is_file()


class VenvError(RuntimeError):
    pass


def build(spec: VenvSpec, log=print) -> Path:
    """Create the venv of `spec` (or return it when already built)."""
    d = venv_dir(spec)
    if is_built(spec):
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log(f"trainer venv {spec.name}: installing {' '.join(spec.requirements)} -> {d}")
    subprocess.run([spec.python, "-m", "venv", str(d)], check=True, capture_output=True)
    py = str(d / "bin" / "python")
    cmd = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *spec.pip_args, *spec.requirements]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        tail = "\n".join(l for l in r.stderr.splitlines() if not l.startswith("WARNING: Location"))[-2000:]
        raise VenvError(f"trainer venv {spec.name}: pip install failed:\n{tail}")
    r = subprocess.run([py, "-c", spec.check], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise VenvError(f"trainer venv {spec.name}: `{spec.check}` failed:\n{r.stderr[-2000:]}")
    (d / ".complete").write_text(f"{time.time():.0f}\n")
    log(f"trainer venv {spec.name}: ready in {time.monotonic() - t0:.0f} s")
    return d


def ensure(name: str) -> Path:
    """The python of the named venv, building it first if needed."""
    build(SPECS[name])
    return python_of(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.trainers.venvs", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"venvs to build (default: all of {', '.join(SPECS)})")
    ap.add_argument("--list", action="store_true", help="print each venv's state and path, build nothing")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    unknown = [n for n in a.names if n not in SPECS]
    if unknown:
        print(f"venvs: unknown {', '.join(unknown)} (known: {', '.join(SPECS)})", file=sys.stderr)
        return 2
    specs = [SPECS[n] for n in a.names or SPECS]
    if a.list:
        for s in specs:
            print(f"{s.name:16} {'built' if is_built(s) else 'missing':8} {venv_dir(s)}")
        return 0
    todo = [s for s in specs if not is_built(s)]
    failed = []
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        for s, f in [(s, pool.submit(build, s, lambda m: print(m, flush=True))) for s in todo]:
            try:
                f.result()
            except (VenvError, subprocess.CalledProcessError) as e:
                failed.append(s.name)
                print(str(e), file=sys.stderr)
    print(f"trainer venvs: {len(specs) - len(failed)} of {len(specs)} ready under {cache_root()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
