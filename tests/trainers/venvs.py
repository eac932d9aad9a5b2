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
    VenvSpec("verl", (TORCH, "verl==0.9.1", "duckdb>=1.1", "cachetools>=5", "fastapi>=0.110", "uvicorn>=0.29"),
             "import verl, ray, transformers, duckdb, verl.experimental.agent_loop, verl.experimental.reward_loop"),
    VenvSpec("trl", (TORCH, "trl==1.16.0", "duckdb>=1.1"), "import trl, transformers, duckdb"),
    # 0.4 runs its chat loop as a uv script; the check drops '' (a checkout's verifiers/ would shadow the library)
    VenvSpec("verifiers-0.4", ("verifiers==0.4.0", "duckdb>=1.1", "uv==0.13.9"),
             "import sys; sys.path.remove(''); import verifiers.v1, duckdb, uv; uv.find_uv_bin()"),
    VenvSpec("verifiers-0.3", ("verifiers==0.3.1", "datasets>=2.19", "duckdb>=1.1"), "import verifiers, duckdb"),
    VenvSpec("verifiers-0.1", ("verifiers==0.1.9.post3", "datasets>=2.19", "duckdb>=1.1"), "import verifiers, duckdb"),
    VenvSpec("openenv-core", ("openenv-core==0.3.0", "duckdb>=1.1"), "import openenv, duckdb"),
    VenvSpec("openenv", ("openenv==0.10.0", "duckdb>=1.1"), "import openenv, duckdb"),
    # OpenRLHF pins deepspeed and flash-attn (a CUDA build), which cannot install on CPU: openrlhf goes in with
    # --no-deps, beside what its dataset, reward and agent modules import, with their closure (pinned as resolved
    # here, since --no-deps resolves nothing).
    VenvSpec("openrlhf", (
        TORCH, "openrlhf==0.11.2",
        "aiohappyeyeballs==2.7.1", "aiohttp==3.14.5", "aiosignal==1.4.0", "annotated-doc==0.0.7",
        "annotated-types==0.8.0", "anyio==4.16.0", "attrs==26.1.0", "certifi==2026.10.19.post1",
        "charset-normalizer==3.5.3", "click==8.5.1", "datasets==5.2.0", "dill==0.4.1", "duckdb==2.0.1",
        "filelock==4.3.1", "frozenlist==1.8.0", "fsspec==2026.9.0", "h11==0.16.0", "hf-xet==1.8.0",
        "httpcore==1.0.9", "httpx==0.29.0", "huggingface_hub==1.33.0", "idna==3.20", "Jinja2==3.1.6",
        "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "markdown-it-py==4.3.0", "MarkupSafe==3.0.4",
        "mdurl==0.1.2", "mpmath==1.3.0", "msgpack==1.2.4", "multidict==7.2.1", "multiprocess==0.70.19",
        "networkx==3.6.1", "numpy==2.4.6", "packaging==26.4", "pandas==3.1.1", "propcache==0.5.4",
        "protobuf==7.36.2", "pyarrow==26.0.1", "pydantic==2.14.4", "pydantic_core==2.50.5", "Pygments==2.21.0",
        "pylatexenc==2.11", "python-dateutil==4.0.0", "PyYAML==6.0.4", "ray==2.55.0", "referencing==0.37.0",
        "regex==2026.11.19", "requests==2.34.2", "rich==15.0.0", "rpds-py==2026.9.1", "safetensors==0.8.0",
        "shellingham==1.5.4", "sympy==1.14.0", "tokenizers==0.22.2", "tqdm==4.70.1", "transformers==5.15.0",
        "typer==0.29.2", "typing-inspection==0.4.5", "typing_extensions==4.16.0", "tzdata==2026.6", "urllib3==2.8.0",
        "xxhash==4.1.0", "yarl==1.25.1"),
        "import openrlhf.utils.agent, openrlhf.datasets, ray, transformers, duckdb", pip_args=("--no-deps",)),
    # nemo-gym 0.7.0 declares Python >= 3.13.14; the newest CPython here is pyenv's 3.13.0 (Debian 12 has 3.11,
    # PyPI has no interpreters), so pip is told to ignore the floor.
    VenvSpec("nemo-gym", ("nemo-gym==0.7.0", "duckdb>=1.1"), "import nemo_gym.base_resources_server, duckdb",
             pip_args=("--ignore-requires-python",),
             python=str(next(iter(sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13"))), "python3.13"))),
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
    # run from the venv, not the checkout: `python -c` puts the working directory first on sys.path,
    # where our own verifiers/ would shadow the library
    r = subprocess.run([py, "-c", spec.check], capture_output=True, text=True, check=False, cwd=d)
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
