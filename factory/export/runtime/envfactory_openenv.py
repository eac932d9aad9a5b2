"""OpenEnv-shaped environment over envfactory tasks, and the OpenEnv app when openenv is installed.

`EnvfactoryCore` needs only the runtime: `reset(seed=None, episode_id=None, task_id=None)`
returns the first observation (the task's prompt and tools); `step(action)` takes
`{"type": "list_tools"}`, `{"type": "call_tool", "tool_name", "arguments"}` or
`{"type": "submit", "answer"}` (ends the episode; reward = the verifier's score) and returns
`{"done", "reward", "metadata", ...}`; `state` is the episode's state. Without `task_id`, reset
picks task `seed % n` (seed 0 when absent) of the sorted task ids.

`build_app()` wraps the core in openenv's `Environment` / `Action` / `Observation` and returns
`create_app(...)`; it needs `openenv-core` (not a dependency of the rest of the export).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_RUNTIME = None


def runtime():
    global _RUNTIME
    if _RUNTIME is None:
        spec = importlib.util.spec_from_file_location(f"_envfactory_runtime_{abs(hash(str(_HERE)))}",
                                                      _HERE / "envfactory_runtime.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _RUNTIME = mod.Runtime(_HERE)
    return _RUNTIME


class EnvfactoryCore:
    def __init__(self):
        self.episode = None
        self.steps = 0
        self.done = False

    def reset(self, seed: int | None = None, episode_id: str | None = None, task_id: str | None = None, **kw) -> dict:
        rt = runtime()
        ids = sorted(rt.tasks)
        task_id = task_id or ids[(seed or 0) % len(ids)]
        if task_id not in rt.tasks:
            raise ValueError(f"unknown task {task_id!r}")
        self.episode = rt.start(episode_id or rt.episode(None, task_id=task_id).id, task_id)
        self.steps, self.done = 0, False
        return {"done": False, "reward": 0.0, "task_id": task_id, "prompt": self.episode.task["prompt"],
                "messages": self.episode.task["messages"], "tools": self.tools(),
                "metadata": {"episode_id": self.episode.id}}

    def tools(self) -> list[dict]:
        return [self.episode.env.schemas[n] for n in self.episode.tool_names]

    def step(self, action: dict) -> dict:
        if self.episode is None:
            return {"done": True, "reward": 0.0, "error": "call reset first", "metadata": {}}
        if self.done:
            return {"done": True, "reward": 0.0, "error": "episode is over; call reset", "metadata": {}}
        self.steps += 1
        kind = action.get("type")
        meta = {"episode_id": self.episode.id, "step": self.steps}
        if kind == "list_tools":
            return {"done": False, "reward": 0.0, "tools": self.tools(), "metadata": meta}
        if kind == "call_tool":
            out = self.episode.call(action.get("tool_name", ""), action.get("arguments") or {})
            return {"done": False, "reward": 0.0, "tool_name": action.get("tool_name"), "result": out, "metadata": meta}
        if kind == "submit":
            result = self.episode.submit(action.get("answer", ""))
            self.done = True
            return {"done": True, "reward": result["score"], "checks": result["checks"], "metadata": meta}
        return {"done": False, "reward": 0.0, "error": f"unknown action type {kind!r}", "metadata": meta}

    @property
    def state(self) -> dict:
        return dict(self.episode.state() if self.episode else {}, step_count=self.steps, done=self.done)


def build_app():
    """The OpenEnv FastAPI app (POST /reset, /step, GET /state, /health, ...)."""
    from typing import Any

    from openenv.core.env_server.http_server import create_app
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State
    from pydantic import Field

    class EnvfactoryAction(Action):
        type: str = "call_tool"
        tool_name: str = ""
        arguments: dict[str, Any] = Field(default_factory=dict)
        answer: str = ""

    class EnvfactoryObservation(Observation):
        task_id: str | None = None
        prompt: str | None = None
        tools: list[dict[str, Any]] | None = None
        result: str | None = None
        error: str | None = None
        checks: list[dict[str, Any]] | None = None

    class EnvfactoryEnvironment(Environment):
        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self):
            super().__init__()
            self.core = EnvfactoryCore()

        def _obs(self, d: dict) -> EnvfactoryObservation:
            keep = {k: d[k] for k in ("task_id", "prompt", "tools", "result", "error", "checks") if k in d}
            return EnvfactoryObservation(done=d["done"], reward=d["reward"], metadata=d.get("metadata", {}), **keep)

        def reset(self, seed=None, episode_id=None, **kwargs):
            return self._obs(self.core.reset(seed, episode_id, kwargs.get("task_id")))

        def step(self, action, timeout_s=None, **kwargs):
            return self._obs(self.core.step(action.model_dump()))

        @property
        def state(self):
            s = self.core.state
            return State(episode_id=s.get("episode_id"), step_count=s["step_count"])

    return create_app(EnvfactoryEnvironment, EnvfactoryAction, EnvfactoryObservation, env_name="envfactory")
