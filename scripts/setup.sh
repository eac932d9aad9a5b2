#!/usr/bin/env bash
# Set-up for a fresh machine: a virtual environment at .venv with the project and its test
# and model dependencies, and Debian's Chromium for the JavaScript-page scraper.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is required (found: $("$PY" --version 2>&1))" >&2; exit 1
fi

if [ ! -x /usr/bin/chromium ] && [ -z "${FACTORY_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Chromium from Debian" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: Chromium is missing. Install it with: sudo apt-get install -y chromium" >&2
    echo "       (or point FACTORY_CHROMIUM at a Chromium binary)" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # torch==2.13.0 resolves to the CPU wheel on local disk here; a bare `torch` could pull
  # a multi-GB CUDA build.
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev,model]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import factory, duckdb, ortools, playwright, torch" >/dev/null
  touch "$stamp"
fi
echo "setup: ok (.venv ready, Chromium at ${FACTORY_CHROMIUM:-/usr/bin/chromium})" >&2
