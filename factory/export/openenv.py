"""openenv: an OpenEnv environment package (openenv.yaml, server/app.py, Dockerfile).

`envfactory_openenv.EnvfactoryCore` is the environment (reset/step/state over the runtime,
no openenv dependency); `server/app.py` builds openenv's `create_app(...)` around it.
Actions: list_tools, call_tool {tool_name, arguments}, submit {answer} (terminal; reward =
verifier score).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from envfactory.factory.export import register
from envfactory.factory.export.common import (
    Source,
    copy_envs,
    copy_runtime,
    max_tool_chars,
    write_card,
    write_settings,
)

__all__ = ["write"]

APP = '''"""OpenEnv app: uvicorn server.app:app --host 0.0.0.0 --port 8000 (run from the export directory)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envfactory_openenv import build_app  # noqa: E402

app = build_app()


def main():
    import uvicorn

    uvicorn.run(app, host="0.0.0.0", port=8000)


if __name__ == "__main__":
    main()
'''

DOCKERFILE = '''FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -r server/requirements.txt
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["uvicorn", "server.app:app", "--host", "0.0.0.0", "--port", "8000"]
'''


def write(src: Source, dest: Path, splits: dict) -> dict:
    limit = max_tool_chars(src)
    copy_envs(src, dest)
    copy_runtime(dest, "envfactory_openenv.py")
    write_settings(dest, {"target": "openenv", "max_tool_response_chars": limit})
    name = "envfactory_" + "_".join(src.seeds)
    (dest / "openenv.yaml").write_text(yaml.safe_dump(
        {"spec_version": 1, "name": name, "type": "space", "runtime": "fastapi", "app": "server.app:app",
         "port": 8000}, sort_keys=False), encoding="utf-8")
    (dest / "server").mkdir()
    (dest / "server" / "__init__.py").write_text("", encoding="utf-8")
    (dest / "server" / "app.py").write_text(APP, encoding="utf-8")
    (dest / "server" / "requirements.txt").write_text("openenv-core>=0.3\nduckdb>=1.1\nuvicorn>=0.30\n",
                                                      encoding="utf-8")
    (dest / "server" / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
    usage = """
```bash
pip install -r server/requirements.txt
uvicorn server.app:app --port 8000        # POST /reset {"task_id": ...}, POST /step {"action": {...}}
```

Actions: `{"type": "list_tools"}`, `{"type": "call_tool", "tool_name", "arguments"}`, `{"type": "submit",
"answer"}` (ends the episode, reward = the verifier's score). Reset takes `task_id` (or `seed`:
task `seed % n`). Without openenv: `from envfactory_openenv import EnvfactoryCore`.
"""
    write_card(dest, "openenv", src, splits, usage, None, limit)
    return {"max_tool_response_chars": limit, "name": name}


register("openenv", write, "OpenEnv environment (openenv.yaml, server/app.py, Dockerfile)")
