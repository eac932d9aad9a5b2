"""JSON schemas derived from typed Python functions with Google-style docstrings.

The common denominator of RL trainers (shared/reference/formats.md §8.1): flat scalar
parameters, string enums (from `Literal[...]`), every parameter required,
`additionalProperties: false`, names matching ^[a-zA-Z0-9_-]{1,64}$.
"""

from __future__ import annotations

import inspect
import re
import typing

__all__ = ["function_schema", "openai_tool", "SchemaError"]

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


class SchemaError(ValueError):
    pass


def _doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    doc = inspect.cleandoc(doc or "")
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    m = re.search(r"^Args:\n((?:[ \t]+.+\n?)+)", doc, re.M)
    if m:
        for line in m[1].splitlines():
            am = re.match(r"\s+(\w+)(?: \([^)]*\))?:\s*(.+)", line)
            if am:
                args[am[1]] = am[2].strip()
    return summary, args


def function_schema(fn) -> dict:
    """{name, description, parameters} for a typed function."""
    name = fn.__name__
    if not NAME.match(name):
        raise SchemaError(f"tool name {name!r} does not match {NAME.pattern}")
    summary, arg_docs = _doc_parts(fn.__doc__)
    if not summary:
        raise SchemaError(f"tool {name} has no docstring")
    hints = typing.get_type_hints(fn)
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        t = hints.get(p.name)
        if typing.get_origin(t) is typing.Literal:
            values = typing.get_args(t)
            if not all(isinstance(v, str) for v in values):
                raise SchemaError(f"{name}.{p.name}: enums must be strings")
            prop = {"type": "string", "enum": list(values)}
        elif t in JSON_TYPES:
            prop = {"type": JSON_TYPES[t]}
        else:
            raise SchemaError(f"{name}.{p.name}: parameter type {t!r} is not a flat scalar")
        if p.name not in arg_docs:
            raise SchemaError(f"{name}.{p.name}: not documented in the docstring's Args")
        prop["description"] = arg_docs[p.name]
        props[p.name] = prop
        required.append(p.name)
    return {"name": name, "description": summary,
            "parameters": {"type": "object", "properties": props, "required": required, "additionalProperties": False}}


def openai_tool(fn) -> dict:
    return {"type": "function", "function": function_schema(fn)}
