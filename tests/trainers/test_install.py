"""This project installed the ordinary way, next to the verifiers library, in a FRESH venv.

`pip install <this checkout> verifiers==0.4.0` (not editable, base dependencies only: no
extras, so no torch) into a new venv under the test's tmp dir. Then, run from outside the
checkout (a checkout's `verifiers/` folder would shadow the library):
- `import verifiers` is the library (site-packages/verifiers), `import envfactory.verifiers` is
  ours (site-packages/envfactory/verifiers): the rename keeps the two apart;
- `import envfactory.factory.cli` works and the `factory` console script prints its help;
- `vf-eval --help` runs, and a verifiers export built by the installed `factory` loads there as
  the library's `Env`.

Not cached, by design: it must see what a user's `pip install` sees. pip's own download cache
(~/.cache/pip, filled by the trainer venvs' builds) makes it about 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERIFIERS = "verifiers==0.4.0"
# verifiers 0.4.0 pins mcp==2.0.0; the project's own mcp>=2.3 (`factory serve`, the MCP export's
# server) is the extra [mcp] for that reason, so the base install resolves beside it.

CHECK = r"""
import json, sys
import verifiers, verifiers.v1
import envfactory, envfactory.verifiers, envfactory.factory.cli
print(json.dumps({"verifiers": verifiers.__file__, "envfactory_verifiers": envfactory.verifiers.__file__,
                  "cli": envfactory.factory.cli.__file__, "version": verifiers.__version__,
                  "torch": "torch" in sys.modules or __import__("importlib.util").util.find_spec("torch") is not None}))
"""

LOAD = r"""
import json, sys
import verifiers.v1 as vf
m = __import__(sys.argv[1])
env = m.load_environment("all")
print(json.dumps({"env": type(env).__name__, "is_env": isinstance(env, vf.Env), "tasks": len(list(env.taskset)),
                  "file": m.__file__}))
"""


def run(cmd, cwd, timeout=300, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, env=env, **kw)


def test_project_and_verifiers_install_together(bundle, tmp_path):
    if os.environ.get("ENVFACTORY_SKIP_TRAINERS") == "1":
        pytest.skip("ENVFACTORY_SKIP_TRAINERS=1")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    # --no-compile: no byte-compiling of every installed package (imports compile what they use).
    pip = run([py, "-m", "pip", "install", "--no-compile", "--disable-pip-version-check", ROOT, VERIFIERS],
              tmp_path, timeout=600)  # pip names a conflict's cause only when not quiet
    errors = "\n".join(l for l in (pip.stdout + pip.stderr).splitlines() if not l.startswith("WARNING: Location"))
    assert pip.returncode == 0, f"pip install <project> {VERIFIERS} failed:\n{errors[-3000:]}"
    listed = run([py, "-m", "pip", "list", "--format", "json"], tmp_path)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "envfactory" in names and "verifiers" in names
    assert not {n for n in names if n == "torch" or n.startswith("nvidia-")}, "a CUDA stack came in"
    direct = json.loads((next(site.glob("envfactory-*.dist-info")) / "direct_url.json").read_text())
    assert not direct.get("dir_info", {}).get("editable"), "installed editable"

    r = run([py, "-c", CHECK], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["verifiers"] == str(site / "verifiers" / "__init__.py") and res["version"] == "0.4.0"
    assert res["envfactory_verifiers"] == str(site / "envfactory" / "verifiers" / "__init__.py")
    assert res["cli"].startswith(str(site / "envfactory" / "factory")) and res["torch"] is False

    r = run([bin_dir / "factory", "--help"], tmp_path)
    assert r.returncode == 0 and "usage" in r.stdout.lower() and "export" in r.stdout, r.stdout + r.stderr
    r = run([bin_dir / "vf-eval", "--help"], tmp_path)
    assert r.returncode == 0 and "vf-eval" in r.stdout and "--env.taskset.id" in r.stdout, r.stdout[-2000:] + r.stderr

    out = tmp_path / "export"
    r = run([bin_dir / "factory", "export", bundle, "--to", "verifiers", "--out", out], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([py, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check", "--no-deps", out],
            tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    module = next(p.name for p in out.iterdir() if (p / "vf_v1.py").is_file())
    r = run([py, "-c", LOAD, module], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res == {"env": "EnvfactoryEnv", "is_env": True, "tasks": sum(1 for _ in _task_lines(bundle)),
                   "file": str(site / module / "__init__.py")}


def _task_lines(bundle: Path):
    for p in sorted(bundle.glob("*/tasks/tasks.jsonl")):
        yield from (l for l in p.read_text().splitlines() if l.strip())
