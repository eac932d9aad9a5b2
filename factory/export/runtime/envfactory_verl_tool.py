"""verl tool for envfactory environments: one class serves every tool in tool_config.yaml.

verl creates, executes and releases a tool instance around every single call
(`ToolAgentLoop._call_tool`), so the rollout's episode is keyed on
`agent_data.request_id` when verl passes `agent_data` (newer verl), else on the instance
id. `create_kwargs` (from the row's `extra_info.tools_kwargs`) name the task and its
environment; a call to a tool outside the task's tool set returns an error result. The call
count is written to `agent_data.extra_fields["envfactory_tool_calls"]`, which the reward
loop merges into `extra_info`.

Imports verl's BaseTool and ToolResponse when verl is installed; without verl, small
stand-ins with the same fields let this module be imported and exercised directly.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import ClassVar
from uuid import uuid4

try:
    from verl.tools.base_tool import BaseTool
    from verl.tools.schemas import ToolResponse
except ImportError:  # verl absent: same constructor and response fields, for use outside a trainer
    class BaseTool:
        def __init__(self, config: dict, tool_schema):
            self.config = config
            self.tool_schema = tool_schema
            fn = tool_schema["function"] if isinstance(tool_schema, dict) else tool_schema.function
            self.name = fn["name"] if isinstance(fn, dict) else fn.name

    class ToolResponse:
        def __init__(self, text: str | None = None, image=None, video=None):
            self.text, self.image, self.video = text, image, video


def _runtime_module():
    here = Path(__file__).resolve().parent
    name = "envfactory_runtime"
    if name in sys.modules and Path(sys.modules[name].__file__).resolve().parent == here:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(f"_envfactory_runtime_{abs(hash(str(here)))}", here / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_RUNTIME = None


def runtime():
    """The export's Runtime, built on first use (shared by every tool instance in the process)."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = _runtime_module().Runtime(Path(__file__).resolve().parent)
    return _RUNTIME


class EnvfactoryTool(BaseTool):
    _instances: ClassVar[dict[str, dict]] = {}  # instance id -> create_kwargs, shared by all tools

    async def create(self, instance_id: str | None = None, create_kwargs: dict | None = None, **kwargs):
        instance_id = instance_id or uuid4().hex
        self._instances[instance_id] = dict(create_kwargs or kwargs.get("create_kwargs") or {})
        return instance_id, ToolResponse()

    async def execute(self, instance_id: str, parameters: dict, **kwargs):
        info = self._instances.get(instance_id, {})
        agent_data = kwargs.get("agent_data")
        key = getattr(agent_data, "request_id", None) or instance_id
        task_id = info.get("task_id")
        rt = runtime()
        if task_id not in rt.tasks:
            return ToolResponse(text=f'{{"error": "unknown task {task_id!r}: check extra_info.tools_kwargs"}}'), 0.0, {}
        episode = rt.episode(key, task_id=task_id)
        text = episode.call(self.name, parameters if isinstance(parameters, dict) else {})
        extra = getattr(agent_data, "extra_fields", None)
        if isinstance(extra, dict):
            extra["envfactory_tool_calls"] = len(episode.calls)
        return ToolResponse(text=text), 0.0, {"chars": len(text)}

    async def calc_reward(self, instance_id: str, **kwargs) -> float:
        return 0.0

    async def release(self, instance_id: str, **kwargs) -> None:
        self._instances.pop(instance_id, None)
