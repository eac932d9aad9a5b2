"""Tool synthesis: typed, documented, read-only tool functions over a sandbox.

Contract: ToolDefs (from the seed and the difficulty ladder's needs) in; a generated
`tools.py` (jinja2) and its OpenAI-format schemas out, schemas derived from the generated
functions themselves. Every generated tool is executed before it is accepted.
"""

from envfactory.toolgen.generate import MAX_RESULT_CHARS, ToolCheckError, check_tools, load_tools, render_tools, tool_schemas
from envfactory.toolgen.schema import function_schema, openai_tool
from envfactory.toolgen.spec import ToolDef, covers, details_tool, distance_tool, from_seed

__all__ = ["ToolDef", "covers", "details_tool", "distance_tool", "from_seed", "render_tools", "load_tools",
           "tool_schemas", "check_tools", "ToolCheckError", "MAX_RESULT_CHARS", "function_schema", "openai_tool"]
