"""Trainer tests: each drives an export through a real trainer library, installed from PyPI
in a venv of its own (`tests/trainers/venvs.py`), by running a driver script from
`tests/trainers/drivers/` with that venv's Python. A driver prints one JSON object as its
last line of stdout; the tests assert on its values.

All of them carry the `trainers` marker: `pytest -m "not trainers"` leaves them out (they need
PyPI the first time, to build the venvs, about 2 minutes each on 2 cores; later runs reuse
them). `ENVFACTORY_SKIP_TRAINERS=1` skips them outright.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.trainers import venvs

DRIVERS = Path(__file__).parent / "drivers"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.trainers)


@pytest.fixture(scope="session")
def trainer_python():
    """trainer_python(name) -> the Python of that trainer venv, built on first use."""
    if os.environ.get("ENVFACTORY_SKIP_TRAINERS") == "1":
        pytest.skip("ENVFACTORY_SKIP_TRAINERS=1")

    def get(name: str) -> Path:
        try:
            return venvs.ensure(name)
        except venvs.VenvError as e:
            pytest.fail(str(e), pytrace=False)

    return get


def run_driver(python: Path, driver: str, *args: str, timeout: float = 600, env: dict | None = None,
               cwd: Path | None = None) -> dict:
    """Run drivers/<driver> under `python`; the last stdout line, parsed as JSON."""
    full_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
                    **(env or {}))
    full_env.pop("PYTHONPATH", None)
    r = subprocess.run([str(python), str(DRIVERS / driver), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=full_env, cwd=cwd, check=False)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    if r.returncode != 0 or not lines:
        raise AssertionError(f"{driver} exited {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-6000:]}")
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise AssertionError(f"{driver}: last line is not JSON: {lines[-1][:500]}\n{r.stderr[-3000:]}") from None
