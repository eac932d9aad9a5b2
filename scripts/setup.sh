#!/usr/bin/env bash
# Set-up for a fresh machine: a virtual environment at .venv with the project and its test
# and model dependencies; Debian's Chromium for the JavaScript-page scraper; Docker, its
# daemon and the sandbox image for `factory validate` (FACTORY_NO_DOCKER=1 skips Docker).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is required (found: $("$PY" --version 2>&1))" >&2; exit 1
fi

# Debian packages: Chromium (the JavaScript-page scraper), Docker and debootstrap (the
# validation sandbox and its locally built image).
need=()
[ -x /usr/bin/chromium ] || [ -n "${FACTORY_CHROMIUM:-}" ] || need+=(chromium)
if [ "${FACTORY_NO_DOCKER:-0}" != 1 ]; then
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing from Debian: ${need[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  elif [[ " ${need[*]} " == *" chromium "* ]]; then
    echo "setup: Chromium is missing. Install it with: sudo apt-get install -y chromium" >&2
    echo "       (or point FACTORY_CHROMIUM at a Chromium binary)" >&2
    exit 1
  else
    echo "setup: warning: ${need[*]} missing (sudo apt-get install -y ${need[*]}); validation will use the local sandbox" >&2
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
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev,model,kernels,mcp,ray]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import factory, duckdb, ortools, playwright, torch, triton, ray" >/dev/null
  touch "$stamp"
fi
# The Docker daemon and the sandbox image (built once, locally, with no registry pull).
docker_state="local sandbox only (no Docker)"
if [ "${FACTORY_NO_DOCKER:-0}" != 1 ] && command -v docker >/dev/null; then
  if ! docker info >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
    echo "setup: starting dockerd (log: /var/log/envfactory-dockerd.log)" >&2
    nohup dockerd >/var/log/envfactory-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  if docker info >/dev/null 2>&1; then
    .venv/bin/python -m envfactory.sandboxes.image --check >/dev/null 2>&1 || .venv/bin/python -m envfactory.sandboxes.image >/dev/null
    docker_state="Docker sandbox image $(.venv/bin/python -m envfactory.sandboxes.image --check | cut -d' ' -f1)"
  else
    echo "setup: warning: no Docker daemon answers; validation will use the local sandbox" >&2
  fi
fi
echo "setup: ok (.venv ready, Chromium at ${FACTORY_CHROMIUM:-/usr/bin/chromium}, ${docker_state})" >&2
