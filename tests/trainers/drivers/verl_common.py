"""Shared by the verl drivers (run with the verl venv's Python; no envfactory import): the
shipped launch command, read back, and the config verl's own `main_ppo` builds from it.

`shipped_argv` runs the export's `run_verl.sh` with `PYTHON` pointing at a recorder, so the
arguments are exactly what bash would hand to `python -m verl.trainer.main_ppo` (with the
export's absolute paths and `PYTHONPATH`). `main_ppo_config` then runs `main_ppo.main` itself,
through Hydra's command line, its device check and `validate_config`, with `run_ppo` (Ray,
GPUs) replaced by a function that keeps the config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["emit", "main_ppo_config", "shipped_argv"]

RECORDER = """#!/bin/sh
printf '%s\\0' "$PYTHONPATH" "$@" > "$VERL_DRIVER_ARGV"
"""


def shipped_argv(export: Path, user_args: list[str], work: Path) -> tuple[list[str], list[str]]:
    """(PYTHONPATH entries, argv after `python`) of `bash run_verl.sh USER_ARGS`."""
    work.mkdir(parents=True, exist_ok=True)
    recorder, out = work / "record_python.sh", work / "argv.bin"
    recorder.write_text(RECORDER, encoding="utf-8")
    recorder.chmod(0o755)
    env = dict(os.environ, PYTHON=str(recorder), VERL_DRIVER_ARGV=str(out))
    env.pop("PYTHONPATH", None)
    subprocess.run(["bash", str(export / "run_verl.sh"), *user_args], check=True, env=env, cwd=work)
    pythonpath, *argv = out.read_text(encoding="utf-8").split("\0")[:-1]
    return [p for p in pythonpath.split(":") if p], argv


def main_ppo_config(export: Path, user_args: list[str], work: Path):
    """The DictConfig `main_ppo.main` hands to `run_ppo` for the shipped command, after verl's
    own checks (an exception here is verl rejecting the config). Puts the script's PYTHONPATH on
    sys.path, as the script does for verl's workers."""
    pythonpath, argv = shipped_argv(export, user_args, work)
    if argv[:2] != ["-m", "verl.trainer.main_ppo"]:
        raise SystemExit(f"run_verl.sh does not run verl.trainer.main_ppo: {argv[:3]}")
    sys.path[:0] = [p for p in pythonpath if p not in sys.path]
    import verl.trainer.main_ppo as main_ppo

    kept = {}
    main_ppo.run_ppo = lambda config, task_runner_class: kept.update(config=config, runner=task_runner_class)
    saved = sys.argv
    sys.argv = ["main_ppo", *argv[2:], f"hydra.run.dir={work / 'hydra'}", "hydra.output_subdir=null"]
    try:
        main_ppo.main()
    finally:
        sys.argv = saved
    if "config" not in kept:
        raise SystemExit("main_ppo.main returned without reaching run_ppo")
    return kept["config"], argv


def emit(obj: dict) -> None:
    """The driver's result: one JSON line, last on stdout."""
    sys.stdout.flush()
    print(json.dumps(obj, default=str), flush=True)
