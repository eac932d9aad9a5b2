#!/usr/bin/env bash
# Set up, then run the whole test suite. The trainer tests (tests/trainers) run exports inside
# the real trainer libraries, each installed from PyPI into a cached venv of its own
# (~/.cache/envfactory/trainer-venvs; about 2 minutes each the first time, 2 at a time).
# ENVFACTORY_SKIP_TRAINERS=1 skips building them and those tests; `-m "not trainers"` too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${ENVFACTORY_SKIP_TRAINERS:-0}" != 1 ]; then
  .venv/bin/python -m tests.trainers.venvs
fi
exec .venv/bin/python -m pytest "$@"
